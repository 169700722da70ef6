"""Running canonical generations: hooks, metrics, aggregation and fan-out of n choices."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

import msgspec
from gateway_schemas.canonical import GenerationChunk, GenerationRequest, TokenLogprob

from gateway.adapters import served
from gateway.auth import current_actor
from gateway.engine.backend import Capability
from gateway.errors import BackendFailure, GatewayError, Unsupported
from gateway.stats import COMPLETION_PREVIEW
from gateway.utils import await_me_maybe

if TYPE_CHECKING:
    from gateway.gateway import Gateway

log = logging.getLogger("gateway.generation")


class Generation(msgspec.Struct, kw_only=True):
    """A whole generation, gathered from its stream."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    final: GenerationChunk


class GenerationService:
    def __init__(self, gateway: Gateway):
        self._gateway = gateway

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """The request as the backend gets it: `[generation] max_tokens` bounds a request
        that sets no limit, a request naming no tenant is the API key's (`current_actor`),
        `prepare_generation` hooks may replace it, and its adapters are resolved
        (`adapters`)."""
        cap = self._gateway.settings.generation.max_tokens
        if request.max_tokens is None and cap is not None:
            request = msgspec.structs.replace(request, max_tokens=cap)
        actor = current_actor()
        if request.tenant is None and actor is not None:
            request = msgspec.structs.replace(request, tenant=actor.id)
        for result in self._gateway.hook.prepare_generation(gateway=self._gateway, request=request):
            if result is not None:
                request = result
        return self.adapters(request)

    def adapters(self, request: GenerationRequest) -> GenerationRequest:
        """`request` with its adapter set resolved: none named means the model's server
        default; every adapter must exist in the model's store, and the model must serve
        adapters. The set is recorded for the response's `X-Gateway-Adapters` header."""
        backend = self._gateway.models.get(request.model)
        if Capability.ADAPTERS in backend.capabilities:
            refs = backend.adapters.resolve(request.adapters)
        elif request.adapters:
            raise Unsupported(
                f"Model `{request.model}` does not serve LoRA adapters.", param="adapters"
            )
        else:
            refs = []
        served.record(refs)
        return msgspec.structs.replace(request, adapters=refs)

    async def stream(
        self, request: GenerationRequest, *, streamed: bool = True
    ) -> AsyncGenerator[GenerationChunk]:
        """The chunks of one generation. Closing this iterator stops the generation.
        `streamed`: whether the client gets them as they come (the recent-requests list
        says so)."""
        backend = self._gateway.models.get(request.model)
        request = self.prepare(request)
        metrics = self._gateway.metrics
        final: GenerationChunk | None = None
        counted = 0
        started = last = time.monotonic()
        started_ns, first_ns = time.time_ns(), None
        preview: list[str] = []
        previewed = 0
        try:
            async with contextlib.aclosing(backend.generate(request)) as chunks:
                async for chunk in chunks:
                    if chunk.token_ids:
                        tokens = len(chunk.token_ids)
                        now = time.monotonic()
                        gap = now - last if counted else None
                        if not counted:
                            first_ns = time.time_ns()
                        metrics.observe_tokens(request.model, tokens, now - started, gap)
                        self._gateway.decode.record(now, tokens, gap)
                        counted += tokens
                        last = now
                    if chunk.text and previewed < COMPLETION_PREVIEW:
                        preview.append(chunk.text)
                        previewed += len(chunk.text)
                    if chunk.finish_reason is not None:
                        final = chunk
                        if chunk.usage is not None:
                            metrics.observe_usage(
                                request.model, request.tenant, chunk.usage, counted
                            )
                    yield chunk
        except GatewayError:
            raise
        except Exception as exc:
            log.exception("backend of %s failed", request.model)
            raise BackendFailure(f"The backend of `{request.model}` failed: {exc}") from exc
        finally:
            final = final or GenerationChunk(finish_reason="abort")
            seconds = time.monotonic() - started
            self._gateway.recent.add(request, final, "".join(preview), seconds, streamed)
            self._gateway.tracing.generation(request, final, started_ns, first_ns, time.time_ns())
            await self._finished(request, final)

    async def complete(self, request: GenerationRequest) -> Generation:
        text: list[str] = []
        ids: list[int] = []
        logprobs: list[TokenLogprob] = []
        final: GenerationChunk | None = None
        async for chunk in self.stream(request, streamed=False):
            text.append(chunk.text)
            ids.extend(chunk.token_ids)
            logprobs.extend(chunk.logprobs)
            final = chunk if chunk.finish_reason is not None else final
        if final is None:
            raise BackendFailure(
                f"The backend of `{request.model}` ended a stream without finishing it."
            )
        return Generation(text="".join(text), token_ids=ids, logprobs=logprobs, final=final)

    async def complete_many(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Several generations at once (n choices, list prompts), in request order."""
        tasks = [asyncio.ensure_future(self.complete(r)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # the first failure ends them all
                task.cancel()

    async def stream_many(
        self, requests: Sequence[GenerationRequest]
    ) -> AsyncGenerator[tuple[int, GenerationChunk]]:
        """Chunks of several generations as they come, tagged with the request's index."""
        if len(requests) == 1:
            async with contextlib.aclosing(self.stream(requests[0])) as only:
                async for chunk in only:
                    yield 0, chunk
            return
        queue: asyncio.Queue[tuple[int, GenerationChunk | BaseException | None]] = asyncio.Queue()

        async def pump(index: int, request: GenerationRequest) -> None:
            try:
                async for chunk in self.stream(request):
                    await queue.put((index, chunk))
            except Exception as exc:
                await queue.put((index, exc))
            else:
                await queue.put((index, None))

        tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
        try:
            running = len(tasks)
            while running:
                index, item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield index, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _finished(self, request: GenerationRequest, final: GenerationChunk) -> None:
        try:
            for result in self._gateway.hook.generation_finished(
                gateway=self._gateway, request=request, final=final
            ):
                await await_me_maybe(result)
        except Exception:
            log.exception("a generation_finished hook failed")
