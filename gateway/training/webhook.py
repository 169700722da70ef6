"""The training webhook: Kiln's payload, POSTed when a job completes, fails or is cancelled.

Delivery is retried with exponential backoff (1 s, 2 s, 4 s, ...) on connection errors,
timeouts, 5xx, 408 and 429 answers, up to `[training] webhook_attempts` tries. Any other
answer ends it: a 2xx is a delivery; a 4xx, or a 3xx (redirects are not followed), is a
refusal that retrying would not change. With `webhook_secret`,
`X-Gateway-Signature: sha256=<hex>` carries the HMAC-SHA256 of the exact body. The outcome
(`sent`/`failed`) is stored on the job, and a delivery that a server stop interrupted is
made again at the next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from gateway.jobs import Job, JobState
from gateway.settings import TrainingSettings

log = logging.getLogger("gateway.training.webhook")

SIGNATURE_HEADER = "X-Gateway-Signature"
RETRIED_STATUSES = frozenset({408, 429})
"""Client errors that say "later", retried like 5xx answers."""


def payload(job: Job) -> dict[str, Any]:
    """Kiln's webhook body, with `cancelled` as a status of its own."""
    finished = job.finished_at if job.finished_at is not None else time.time()
    return {
        "job_id": job.id,
        "job_type": job.kind,
        "status": job.state.value,
        "adapter_name": job.output_name,
        "adapter_path": job.adapter_path if job.state == JobState.COMPLETED else None,
        "error": job.error,
        "timestamp": datetime.fromtimestamp(finished, UTC).isoformat(),
    }


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_delays(attempts: int, backoff: float) -> list[float]:
    """Seconds to wait before each retry: `backoff`, twice that, four times, ..."""
    return [backoff * 2**i for i in range(attempts - 1)]


async def deliver(settings: TrainingSettings, job: Job, *, backoff: float = 1.0) -> bool:
    """POST the payload of `job` to `settings.webhook_url`; True once it was accepted."""
    assert settings.webhook_url
    try:
        url = httpx.URL(settings.webhook_url)
    except httpx.InvalidURL as exc:
        log.warning("webhook for job %s not sent: invalid URL (%s)", job.id, exc)
        return False
    if url.scheme not in ("http", "https") or not url.host:
        log.warning("webhook for job %s not sent: %s is not an http(s) URL", job.id, url)
        return False
    body = json.dumps(payload(job)).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "gateway-training-webhook"}
    if settings.webhook_secret:
        headers[SIGNATURE_HEADER] = signature(settings.webhook_secret, body)
    delays = retry_delays(settings.webhook_attempts, backoff)
    async with httpx.AsyncClient(timeout=settings.webhook_timeout, follow_redirects=False) as c:
        for attempt in range(1, settings.webhook_attempts + 1):
            try:
                reply = await c.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                status = reply.status_code
                if 200 <= status < 300:
                    return True
                if status < 500 and status not in RETRIED_STATUSES:
                    why = "redirect not followed" if status < 400 else "refused"
                    log.warning("webhook for job %s %s: HTTP %s", job.id, why, status)
                    return False
                problem = f"HTTP {status}"
            if attempt > len(delays):
                log.warning("webhook for job %s failed (%s); giving up", job.id, problem)
                break
            delay = delays[attempt - 1]
            log.warning(
                "webhook for job %s failed (%s); retry %d in %gs", job.id, problem, attempt, delay
            )
            await asyncio.sleep(delay)
    return False
