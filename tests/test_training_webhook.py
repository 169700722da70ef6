"""The training webhook against a real local HTTP receiver: Kiln's payload, the HMAC
signature, retries with backoff on 5xx and connection errors, no retry of a refusal, no
redirects followed."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler

import pytest
from live import free_port, http_server

from gateway.jobs import Job, JobState
from gateway.settings import TrainingSettings
from gateway.training import webhook
from gateway.training.webhook import SIGNATURE_HEADER, deliver, payload, retry_delays

BACKOFF = 0.01
KILN_FIELDS = {"job_id", "job_type", "status", "adapter_name", "adapter_path", "error", "timestamp"}


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint: answers each call with the next of `answers` (then 200), and
    keeps every call it got. An answer `"hang"` waits until the test ends."""

    url: str
    answers: list[int | str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.calls.append(Call(self.path, dict(self.headers.items()), body))
            answer = state.answers.pop(0) if state.answers else 200
            if answer == "hang":
                state.release.wait(30)
                return
            assert isinstance(answer, int)
            self.send_response(answer)
            if 300 <= answer < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with http_server(Handler) as url:
        state.url = f"{url}/hooks/training"
        try:
            yield state
        finally:
            state.release.set()


def job(state: JobState = JobState.COMPLETED, **fields: object) -> Job:
    values: dict[str, object] = {
        "id": "6f1c3a52-3d86-4d4c-9a59-0f2ad2b0c1e7",
        "kind": "sft",
        "model": "smollm2-135m-instruct",
        "state": state,
        "output_name": "sft-6f1c3a52",
        "config": {"epochs": 3},
        "created_at": 1_700_000_000.0,
        "started_at": 1_700_000_001.0,
        "finished_at": 1_700_000_042.5,
        "adapter_path": "/data/adapters/smollm2-135m-instruct/sft-6f1c3a52",
    }
    values.update(fields)
    return Job(**values)  # type: ignore[arg-type]


def settings(url: str, **fields: object) -> TrainingSettings:
    fields.setdefault("webhook_attempts", 4)
    fields.setdefault("webhook_timeout", 5.0)
    return TrainingSettings(webhook_url=url, **fields)  # type: ignore[arg-type]


def retries(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The delays the retry log lines announced."""
    return [
        float(record.args[3])  # type: ignore[index,arg-type]
        for record in caplog.records
        if record.name == webhook.log.name and "retry" in record.msg
    ]


async def test_delivers_kilns_payload_once(receiver: Receiver):
    assert await deliver(settings(receiver.url), job(), backoff=BACKOFF)
    assert len(receiver.calls) == 1
    call = receiver.calls[0]
    assert call.path == "/hooks/training"
    assert call.headers["Content-Type"] == "application/json"
    assert SIGNATURE_HEADER not in call.headers  # no secret, no signature
    body = json.loads(call.body)
    assert set(body) == KILN_FIELDS
    assert body == {
        "job_id": "6f1c3a52-3d86-4d4c-9a59-0f2ad2b0c1e7",
        "job_type": "sft",
        "status": "completed",
        "adapter_name": "sft-6f1c3a52",
        "adapter_path": "/data/adapters/smollm2-135m-instruct/sft-6f1c3a52",
        "error": None,
        "timestamp": "2023-11-14T22:14:02.500000+00:00",
    }
    assert datetime.fromisoformat(body["timestamp"]).timestamp() == 1_700_000_042.5


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED])
def test_payload_of_a_job_that_wrote_no_adapter(state: JobState):
    body = payload(job(state, kind="grpo", error="RuntimeError: boom", adapter_path=None))
    assert set(body) == KILN_FIELDS
    assert (body["status"], body["job_type"]) == (state.value, "grpo")
    assert body["adapter_path"] is None and body["error"] == "RuntimeError: boom"
    # A failed job with a stale path still sends none: only a completed job has an adapter.
    assert payload(job(state, adapter_path="/stale"))["adapter_path"] is None


def test_payload_without_a_finish_time_is_stamped_now():
    stamp = datetime.fromisoformat(payload(job(finished_at=None))["timestamp"])
    assert stamp.year >= 2025 and stamp.utcoffset() is not None


async def test_signature_is_the_hmac_of_the_exact_body(receiver: Receiver):
    secret = "s3cret-for-hooks"
    assert await deliver(settings(receiver.url, webhook_secret=secret), job(), backoff=BACKOFF)
    call = receiver.calls[0]
    expected = hmac.new(secret.encode(), call.body, hashlib.sha256).hexdigest()
    assert call.headers[SIGNATURE_HEADER] == f"sha256={expected}"
    wrong = hmac.new(b"another-secret", call.body, hashlib.sha256).hexdigest()
    assert call.headers[SIGNATURE_HEADER] != f"sha256={wrong}"


async def test_server_errors_are_retried_with_backoff(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
):
    receiver.answers = [500, 502, 503]
    caplog.set_level(logging.WARNING, webhook.log.name)
    assert await deliver(
        settings(receiver.url, webhook_secret="k3y-k3y-k3y"), job(), backoff=BACKOFF
    )
    assert len(receiver.calls) == 4
    assert len({call.body for call in receiver.calls}) == 1  # the same body every time
    assert len({call.headers[SIGNATURE_HEADER] for call in receiver.calls}) == 1
    assert retries(caplog) == [BACKOFF, 2 * BACKOFF, 4 * BACKOFF]


async def test_gives_up_after_the_attempts(receiver: Receiver, caplog: pytest.LogCaptureFixture):
    receiver.answers = [500] * 10
    caplog.set_level(logging.WARNING, webhook.log.name)
    assert not await deliver(settings(receiver.url, webhook_attempts=3), job(), backoff=BACKOFF)
    assert len(receiver.calls) == 3
    assert retries(caplog) == [BACKOFF, 2 * BACKOFF]
    assert "giving up" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_a_refusal_is_not_retried(receiver: Receiver, status: int):
    receiver.answers = [status]
    assert not await deliver(settings(receiver.url), job(), backoff=BACKOFF)
    assert len(receiver.calls) == 1


@pytest.mark.parametrize("status", [408, 429])
async def test_later_please_is_retried(receiver: Receiver, status: int):
    receiver.answers = [status]
    assert await deliver(settings(receiver.url), job(), backoff=BACKOFF)
    assert len(receiver.calls) == 2


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_not_followed(receiver: Receiver, status: int):
    receiver.answers = [status]
    assert not await deliver(settings(receiver.url), job(), backoff=BACKOFF)
    assert [call.path for call in receiver.calls] == ["/hooks/training"]  # not /elsewhere


async def test_a_timeout_is_retried(receiver: Receiver):
    receiver.answers = ["hang"]
    hook = settings(receiver.url, webhook_timeout=0.5, webhook_attempts=3)
    assert await deliver(hook, job(), backoff=BACKOFF)
    assert len(receiver.calls) == 2


async def test_an_unreachable_url_fails_after_the_attempts(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, webhook.log.name)
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    assert not await deliver(settings(url, webhook_attempts=3), job(), backoff=BACKOFF)
    assert retries(caplog) == [BACKOFF, 2 * BACKOFF]
    assert "ConnectError" in caplog.records[0].getMessage()


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/hook", "http://"])
async def test_an_invalid_url_fails_at_once(url: str, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, webhook.log.name)
    assert not await deliver(settings(url), job(), backoff=BACKOFF)
    assert retries(caplog) == []
    assert "not sent" in caplog.records[-1].getMessage()


def test_retry_delays_double():
    assert retry_delays(1, 1.0) == []
    assert retry_delays(5, 1.0) == [1.0, 2.0, 4.0, 8.0]
    assert retry_delays(3, 0.25) == [0.25, 0.5]
