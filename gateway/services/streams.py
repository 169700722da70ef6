"""Helpers for async streams."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Headers of every server-sent-events response: no caching, no proxy buffering."""


async def primed(stream: AsyncGenerator[T]) -> AsyncIterator[T]:
    """Start `stream` now, so that its early errors (a bad request) surface before a
    streaming response has sent its status line. Returns a stream of the same items."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return _empty()
    except BaseException:
        with contextlib.suppress(Exception):
            await stream.aclose()
        raise
    return _chain(first, stream)


async def _empty() -> AsyncIterator[T]:
    return
    yield


async def _chain(first: T, rest: AsyncGenerator[T]) -> AsyncIterator[T]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()
