"""The one HTTP client of a teacher backend: posts a body, yields the stream's JSON events.

aiohttp, measured against httpx on the same loopback upstream (`benchmarks/README.md`,
"Teacher proxy"): about 0.18 ms of client time per streamed request against 0.5 ms, and
20 times the requests/s at 32 concurrent streams, where httpx's connection pool slows
down. Every failure comes out as an `UpstreamProblem` (classified in `failures`); the
client itself never retries. An upstream that answers a streamed request with one JSON
body (no SSE) yields that body as its only event.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import msgspec

from gateway.tracing import inject
from gateway_teacher.failures import UpstreamProblem, from_response
from gateway_teacher.sse import SseParser
from gateway_teacher.targets import Target

DONE = b"[DONE]"


class UpstreamClient:
    """An `aiohttp.ClientSession` shared by every upstream of one backend (a pool of
    `max_connections`), opened by `open()` in the event loop that will use it.
    `trust_env` takes proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`."""

    def __init__(self, max_connections: int = 256, *, trust_env: bool = False):
        self._max_connections = max_connections
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None
        self._decoder = msgspec.json.Decoder()
        self._encoder = msgspec.json.Encoder()
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=self._trust_env,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def is_open(self) -> bool:
        return self._session is not None

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        """Bounds connecting and every read (not the whole stream, which may be long)."""
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
            self._timeouts[seconds] = timeout
        return timeout

    async def events(
        self, target: Target, path: str, body: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any]]:
        """POST `body` to `target`'s `path` and yield each JSON event of the answer."""
        if self._session is None:
            raise RuntimeError("the teacher backend is not loaded: call load() first")
        try:
            headers = dict(target.headers)
            inject(headers)  # the client's trace goes on upstream
            response = await self._session.post(
                target.base_url + path,
                data=self._encoder.encode(body),
                headers=headers,
                timeout=self._timeout(target.timeout),
            )
        except TimeoutError as exc:
            raise _timeout(target, exc) from None
        except aiohttp.ClientError as exc:
            raise UpstreamProblem(target.id, "connection", _text(exc)) from None
        try:
            if response.status >= 400:
                raw = await response.read()
                raise from_response(target.id, response.status, response.headers, raw)
            if response.content_type == "application/json":
                yield self._decoder.decode(await response.read())
                return
            parser, done = SseParser(), False
            async for piece in response.content.iter_any():  # read to the end: the
                for data in [] if done else parser.feed(piece):  # connection is reused
                    if data == DONE:
                        done = True
                        break
                    yield self._decoder.decode(data)
            for data in [] if done else parser.close():
                if data != DONE:
                    yield self._decoder.decode(data)
        except TimeoutError as exc:
            raise _timeout(target, exc) from None
        except aiohttp.ClientError as exc:
            raise UpstreamProblem(target.id, "stream", _text(exc)) from None
        except msgspec.DecodeError as exc:
            raise UpstreamProblem(target.id, "stream", f"an event is not JSON ({exc})") from None
        finally:
            response.release()


def _timeout(target: Target, exc: BaseException) -> UpstreamProblem:
    return UpstreamProblem(
        target.id, "timeout", f"no answer within {target.timeout:g} s ({type(exc).__name__})"
    )


def _text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
