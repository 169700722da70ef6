"""The one HTTP client of a teacher backend: posts a body, yields the stream's JSON events.

Every failure comes out as an `UpstreamProblem` (classified in `failures`); the client
itself never retries. An upstream that answers a streamed request with one JSON body
(no SSE) yields that body as its only event.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx
import msgspec

from gateway_teacher.failures import UpstreamProblem, from_response
from gateway_teacher.sse import SseParser
from gateway_teacher.targets import Target

DONE = b"[DONE]"


class UpstreamClient:
    """An `httpx.AsyncClient` shared by every upstream of one backend (connection pool
    of `max_connections`), opened by `open()` in the event loop that will use it."""

    def __init__(self, max_connections: int = 256):
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client: httpx.AsyncClient | None = None
        self._decoder = msgspec.json.Decoder()

    async def open(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(limits=self._limits, timeout=None)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def is_open(self) -> bool:
        return self._client is not None

    async def events(
        self, target: Target, path: str, body: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any]]:
        """POST `body` to `target`'s `path` and yield each JSON event of the answer."""
        if self._client is None:
            raise RuntimeError("the teacher backend is not loaded: call load() first")
        request = self._client.build_request(
            "POST",
            target.base_url + path,
            content=msgspec.json.encode(body),
            headers=target.headers,
            timeout=httpx.Timeout(target.timeout),
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise _timeout(target, exc) from None
        except httpx.TransportError as exc:
            raise UpstreamProblem(target.id, "connection", _text(exc)) from None
        try:
            if response.status_code >= 400:
                raw = await response.aread()
                raise from_response(target.id, response.status_code, response.headers, raw)
            if response.headers.get("content-type", "").startswith("application/json"):
                yield self._decoder.decode(await response.aread())
                return
            parser, done = SseParser(), False
            async for piece in response.aiter_bytes():  # read to the end: the connection
                for data in [] if done else parser.feed(piece):  # goes back to the pool
                    if data == DONE:
                        done = True
                        break
                    yield self._decoder.decode(data)
            for data in [] if done else parser.close():
                if data != DONE:
                    yield self._decoder.decode(data)
        except httpx.TimeoutException as exc:
            raise _timeout(target, exc) from None
        except httpx.TransportError as exc:
            raise UpstreamProblem(target.id, "stream", _text(exc)) from None
        except msgspec.DecodeError as exc:
            raise UpstreamProblem(target.id, "stream", f"an event is not JSON ({exc})") from None
        finally:
            await response.aclose()


def _timeout(target: Target, exc: Exception) -> UpstreamProblem:
    return UpstreamProblem(
        target.id, "timeout", f"no answer within {target.timeout:g} s ({type(exc).__name__})"
    )


def _text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
