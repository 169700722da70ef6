"""The built-in plugin that feeds `Gateway.recording` (see `gateway.recording`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from gateway.hookspecs import hookimpl

if TYPE_CHECKING:
    from gateway_schemas.canonical import GenerationChunk, GenerationRequest

    from gateway.gateway import Gateway


@hookimpl
def generation_finished(
    gateway: Gateway, request: GenerationRequest, final: GenerationChunk
) -> None:
    """Queue the generation's prompt when `[recording]` wants it (never waits)."""
    gateway.recording.record(request, final)


@hookimpl
def shutdown(gateway: Gateway) -> Awaitable[None]:
    """Write what is still queued, in a thread, and stop the writer."""
    return asyncio.to_thread(gateway.recording.close)
