"""A client that goes away frees its work; requests without a limit are bounded.

The live tests start a generation that would run until its 4096-token context is full,
wait until the engine shows it in a slot, drop the connection, and wait for the slot to
be free again: streaming and not, on a route of every family, on the real model.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from gateway.disconnects import run_until_disconnect
from gateway.engine import ModelSpec
from gateway.settings import GenerationSettings

LONG = "Tell me everything you know about the history of the world, in detail."

CHAT = {"messages": [{"role": "user", "content": LONG}], "ignore_eos": True}
KOBOLD = {"prompt": LONG, "max_length": 4000, "use_default_badwordsids": True}
# (path, body, stream) of requests that generate until the context is full, unless stopped.
ENDLESS: list[tuple[str, dict[str, Any], bool]] = [
    ("/v1/chat/completions", CHAT, False),
    ("/v1/chat/completions", CHAT, True),
    ("/v1/completions", {"prompt": LONG, "max_tokens": None, "ignore_eos": True}, False),
    ("/v1/completions", {"prompt": LONG, "max_tokens": None, "ignore_eos": True}, True),
    ("/chat/completions", CHAT, False),
    ("/completion", {"prompt": LONG, "ignore_eos": True}, False),
    ("/completion", {"prompt": LONG, "ignore_eos": True}, True),
    ("/api/v1/generate", KOBOLD, False),
    ("/api/extra/generate/stream", KOBOLD, True),
]


def _busy(url: str) -> list[dict[str, Any]]:
    return [s for s in httpx.get(f"{url}/slots", timeout=10).json() if s["is_processing"]]


def _wait(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


async def _abandon(url: str, path: str, body: dict[str, Any], stream: bool) -> None:
    """Send the request, wait until its sequence holds a slot, then drop the connection."""
    body = {**body, "stream": True} if stream and not path.endswith("/stream") else body
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def call() -> None:
            if stream:
                async with client.stream("POST", path, json=body) as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_bytes():
                        pass
            else:
                await client.post(path, json=body)

        task = asyncio.create_task(call())
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(_busy, url):
            assert not task.done(), "the request ended before it was abandoned"
            assert time.monotonic() < deadline, "the request never reached a slot"
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    ("path", "body", "stream"),
    ENDLESS,
    ids=[f"{p}-{'stream' if st else 'plain'}" for p, _, st in ENDLESS],
)
def test_a_client_that_leaves_frees_its_slot(live_server, path, body, stream):
    url = live_server.url
    _wait(lambda: not _busy(url), "every slot is free before the test")
    asyncio.run(_abandon(url, path, body, stream))
    # Without the disconnect the sequence would run on for minutes, to its 4096-token
    # context; its slot is free as soon as the engine has seen the abort.
    _wait(lambda: not _busy(url), "the abandoned sequence left its slot")


def test_unbounded_requests_are_capped_by_the_setting(make_client):
    client = make_client(generation=GenerationSettings(max_tokens=3))
    body = client.post("/v1/completions", json={"prompt": "abcdefgh", "max_tokens": None}).json()
    assert body["choices"][0]["text"] == "abc"
    assert body["choices"][0]["finish_reason"] == "length"
    native = client.post("/completion", json={"prompt": "abcdefgh", "n_predict": -1}).json()
    assert native["content"] == "abc"
    assert native["stop_type"] == "limit"
    # An explicit limit is the request's own.
    body = client.post("/v1/completions", json={"prompt": "abcdefgh", "max_tokens": 5}).json()
    assert body["choices"][0]["text"] == "abcde"


def test_uncapped_by_default(make_client):
    client = make_client(models=[ModelSpec(name="echo", backend="echo")])
    body = client.post("/completion", json={"prompt": "abcdefgh", "n_predict": -1}).json()
    assert body["content"] == "abcdefgh"


async def test_the_app_is_cancelled_when_the_client_leaves_mid_handler():
    started, cancelled = asyncio.Event(), asyncio.Event()
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await messages.put({"type": "http.request", "body": b"{}", "more_body": False})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the body
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def receive() -> Any:
        return await messages.get()

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent to a client that left")

    run = asyncio.create_task(run_until_disconnect(app, {"type": "http"}, receive, send))
    await started.wait()
    await messages.put({"type": "http.disconnect"})
    assert await run is False
    assert cancelled.is_set()


async def test_a_finished_response_is_not_cancelled_and_errors_propagate():
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Any:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # a client that stays connected

    async def send(message: Any) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    assert await run_until_disconnect(app, {"type": "http"}, receive, send) is True
    assert sent[-1]["body"] == b"ok"

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    requests.append({"type": "http.request", "body": b"", "more_body": False})
    with pytest.raises(RuntimeError, match="boom"):
        await run_until_disconnect(broken, {"type": "http"}, receive, send)
