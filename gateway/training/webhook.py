"""The training webhook: Kiln's payload, POSTed when a job completes, fails or is cancelled.

Delivery is retried with exponential backoff (1 s, 2 s, 4 s, ...) on connection errors
and 5xx answers, up to `[training] webhook_attempts` tries; redirects are not followed.
With `webhook_secret`, `X-Gateway-Signature: sha256=<hex>` carries the HMAC-SHA256 of the
exact body. The outcome (`sent`/`failed`) is stored on the job, and a delivery that a
server stop interrupted is made again at the next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Any

import httpx

from gateway.jobs import Job, JobState
from gateway.settings import TrainingSettings

log = logging.getLogger("gateway.training.webhook")

SIGNATURE_HEADER = "X-Gateway-Signature"


def payload(job: Job) -> dict[str, Any]:
    """Kiln's webhook body, with `cancelled` as a status of its own."""
    return {
        "job_id": job.id,
        "job_type": job.kind,
        "status": job.state.value,
        "adapter_name": job.output_name,
        "adapter_path": job.adapter_path if job.state == JobState.COMPLETED else None,
        "error": job.error,
        "timestamp": datetime.fromtimestamp(job.finished_at or 0, UTC).isoformat(),
    }


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def deliver(settings: TrainingSettings, job: Job, *, backoff: float = 1.0) -> bool:
    """POST the payload of `job` to `settings.webhook_url`; True once it was accepted."""
    assert settings.webhook_url
    body = json.dumps(payload(job)).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "gateway-training-webhook"}
    if settings.webhook_secret:
        headers[SIGNATURE_HEADER] = signature(settings.webhook_secret, body)
    async with httpx.AsyncClient(timeout=settings.webhook_timeout, follow_redirects=False) as c:
        for attempt in range(1, settings.webhook_attempts + 1):
            try:
                reply = await c.post(settings.webhook_url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if reply.status_code < 500:
                    if reply.status_code >= 400:
                        log.warning(
                            "webhook for job %s refused: HTTP %s", job.id, reply.status_code
                        )
                        return False
                    return True
                problem = f"HTTP {reply.status_code}"
            if attempt < settings.webhook_attempts:
                delay = backoff * 2 ** (attempt - 1)
                log.warning(
                    "webhook for job %s failed (%s); retry %d in %.0fs",
                    job.id,
                    problem,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                log.warning("webhook for job %s failed (%s); giving up", job.id, problem)
    return False
