"""OpenAI routes: thin handlers that parse, call the generation service, and render."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from gateway_schemas.canonical import GenerationChunk, GenerationRequest
from gateway_schemas.openai import (
    AdapterIn,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream
from msgspec import UNSET

from gateway.adapters import served
from gateway.engine import Capability, ModelHandle
from gateway.errors import GatewayError
from gateway.gateway import Gateway
from gateway.routes.models.controllers import NewModel, add_model
from gateway.routes.openai import tools
from gateway.routes.openai import translate as tr
from gateway.services.embeddings import embed
from gateway.services.generation import Generation
from gateway.services.streams import SSE_HEADERS, primed

ERRORS = {
    400: ResponseSpec(ErrorResponse, description="Invalid request"),
    404: ResponseSpec(ErrorResponse, description="Unknown model"),
    503: ResponseSpec(ErrorResponse, description="Model still loading"),
}


def _sse(events: AsyncIterator[bytes]) -> Stream:
    return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS)


def _error_event(exc: GatewayError) -> bytes:
    return tr.encode_event(
        {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}
    )


def _card(handle: ModelHandle) -> ModelCard:
    return ModelCard(
        id=handle.spec.name,
        created=handle.created,
        owned_by="gateway",
        status=handle.router_status(),
    )


class OpenAIController(Controller):
    path = "/v1"

    @get("/models", responses={200: ResponseSpec(ModelList)})
    async def list_models(self, gateway: NamedDependency[Gateway]) -> ModelList:
        return ModelList(data=[_card(h) for h in gateway.models])

    @get("/models/{model_id:path}", responses={200: ResponseSpec(ModelCard), **ERRORS})
    async def get_model(
        self, gateway: NamedDependency[Gateway], model_id: FromPath[str]
    ) -> ModelCard:
        return _card(gateway.models.handle(model_id.lstrip("/")))

    @post("/models", status_code=201, responses={201: ResponseSpec(ModelCard), **ERRORS})
    async def add_model(
        self, data: JSONBody[NewModel], gateway: NamedDependency[Gateway]
    ) -> ModelCard:
        """Register a model at run time (the model manager's; `admin` scope). It loads on
        demand unless `load` is `startup`."""
        return _card(await add_model(gateway, data))

    @post(
        "/chat/completions",
        status_code=200,
        responses={
            200: ResponseSpec(ChatCompletion, description="or an SSE stream of chunks"),
            **ERRORS,
        },
    )
    async def chat_completions(
        self, data: JSONBody[ChatCompletionRequest], gateway: NamedDependency[Gateway]
    ) -> Response[Any]:
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        model = gateway.model_for(data.model, Capability.CHAT)
        data = msgspec.structs.replace(data, model=model)
        tool_plan = tools.plan(data)
        requests = tr.chat_requests(data, rid, model, tool_plan)
        gateway.models.get(model)
        if data.stream:
            chunks = await primed(gateway.generation.stream_many(requests))
            return _sse(_chat_events(data, rid, chunks, tool_plan))
        results = await gateway.generation.complete_many(requests)
        body = ChatCompletion(
            id=rid,
            created=int(time.time()),
            model=model,
            choices=[_chat_choice(i, r, data.logprobs, tool_plan) for i, r in enumerate(results)],
            usage=tr.usage([r.final.usage for r in results], prompts=1),
            timings=tr.timings([r.final.timings for r in results]),
            adapters=served_adapters(),
        )
        return Response(body)

    @post(
        "/completions",
        status_code=200,
        responses={
            200: ResponseSpec(Completion, description="or an SSE stream of chunks"),
            **ERRORS,
        },
    )
    async def completions(
        self, data: JSONBody[CompletionRequest], gateway: NamedDependency[Gateway]
    ) -> Response[Any]:
        rid = f"cmpl-{uuid.uuid4().hex}"
        model = gateway.model_for(data.model, Capability.GENERATE)
        data = msgspec.structs.replace(data, model=model)
        requests = tr.completion_requests(data, rid, model)
        backend = gateway.models.get(model)
        echoes = [await _prompt_text(backend, r) if data.echo else "" for r in requests]
        if data.stream:
            chunks = await primed(gateway.generation.stream_many(requests))
            return _sse(_completion_events(data, rid, chunks, echoes))
        results = await gateway.generation.complete_many(requests)
        body = Completion(
            id=rid,
            created=int(time.time()),
            model=model,
            choices=[
                CompletionChoice(
                    index=i,
                    text=echoes[i] + r.text,
                    finish_reason=tr.finish_reason(r.final.finish_reason),
                    logprobs=tr.completion_logprobs(r.logprobs, len(echoes[i]))
                    if data.logprobs is not None
                    else None,
                )
                for i, r in enumerate(results)
            ],
            usage=tr.usage([r.final.usage for r in results], prompts=len(requests) // data.n),
            timings=tr.timings([r.final.timings for r in results]),
            adapters=served_adapters(),
        )
        return Response(body)

    @post(
        "/embeddings", status_code=200, responses={200: ResponseSpec(EmbeddingResponse), **ERRORS}
    )
    async def embeddings(
        self, data: JSONBody[EmbeddingRequest], gateway: NamedDependency[Gateway]
    ) -> EmbeddingResponse:
        return await embed(gateway, data)


def served_adapters() -> list[AdapterIn] | Any:
    """The adapters that served this request's generations (the first set), for the body."""
    adapters = served.first()
    if adapters is None:
        return UNSET
    return [AdapterIn(name=r.name, scale=r.scale) for r in adapters]


async def _prompt_text(backend: Any, request: GenerationRequest) -> str:
    prompt = request.prompt
    return prompt if isinstance(prompt, str) else await backend.detokenize(prompt or [])


def _chat_choice(
    index: int, result: Generation, logprobs: bool, tool_plan: tools.ToolPlan
) -> ChatChoice:
    message, reason = tools.reply(
        tool_plan, result.text, tr.finish_reason(result.final.finish_reason)
    )
    return ChatChoice(
        index=index,
        message=message,
        finish_reason=reason,
        logprobs=tr.chat_logprobs(result.logprobs) if logprobs else None,
    )


async def _chat_events(
    body: ChatCompletionRequest,
    rid: str,
    chunks: AsyncIterator[tuple[int, GenerationChunk]],
    tool_plan: tools.ToolPlan,
) -> AsyncIterator[bytes]:
    created = int(time.time())
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    def event(choices: list[ChatChunkChoice], **extra: Any) -> bytes:
        return tr.encode_event(
            ChatCompletionChunk(
                id=rid, created=created, model=body.model or "", choices=choices, **extra
            )
        )

    for index in range(body.n):
        yield event([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
    usages: list[Any] = [None] * body.n
    timings: list[Any] = [None] * body.n
    started, predicted = time.perf_counter(), 0
    # Content passes through as it comes; tool calls are sent once each is complete.
    streams = [tools.DeltaStream(tool_plan) for _ in range(body.n)]
    try:
        async for index, chunk in chunks:
            predicted += len(chunk.token_ids)
            if chunk.text or chunk.logprobs:
                logprobs = tr.chat_logprobs(chunk.logprobs) if body.logprobs else None
                partial = (
                    tr.partial_timings(predicted, started, time.perf_counter())
                    if body.timings_per_token
                    else UNSET
                )
                deltas = streams[index].feed(chunk.text) or ([Delta()] if logprobs else [])
                for delta in deltas:
                    choice = ChatChunkChoice(index=index, delta=delta, logprobs=logprobs)
                    yield event([choice], timings=partial)
                    logprobs = None
            if chunk.finish_reason is not None:
                usages[index], timings[index] = chunk.usage, chunk.timings
                last, reason = streams[index].finish(tr.finish_reason(chunk.finish_reason))
                for delta in last:
                    yield event([ChatChunkChoice(index=index, delta=delta)])
                yield event(
                    [ChatChunkChoice(index=index, delta=Delta(), finish_reason=reason)],
                    timings=tr.timings([chunk.timings]),
                )
    except GatewayError as exc:
        yield _error_event(exc)
        yield tr.DONE
        return
    if include_usage:
        yield event([], usage=tr.usage(usages, prompts=1), timings=tr.timings(timings))
    yield tr.DONE


async def _completion_events(
    body: CompletionRequest,
    rid: str,
    chunks: AsyncIterator[tuple[int, GenerationChunk]],
    echoes: list[str],
) -> AsyncIterator[bytes]:
    created = int(time.time())
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    offsets = [len(e) for e in echoes]

    def event(choices: list[CompletionChoice], **extra: Any) -> bytes:
        return tr.encode_event(
            Completion(id=rid, created=created, model=body.model or "", choices=choices, **extra)
        )

    for index, echo in enumerate(echoes):
        if echo:
            yield event([CompletionChoice(index=index, text=echo, finish_reason=None)])
    usages: list[Any] = [None] * len(echoes)
    timings: list[Any] = [None] * len(echoes)
    try:
        async for index, chunk in chunks:
            logprobs = None
            if body.logprobs is not None:
                logprobs = tr.completion_logprobs(chunk.logprobs, offsets[index])
            offsets[index] += len(chunk.text)
            if chunk.finish_reason is not None:
                usages[index], timings[index] = chunk.usage, chunk.timings
            if chunk.text or chunk.finish_reason is not None:
                reason = tr.finish_reason(chunk.finish_reason)
                yield event(
                    [
                        CompletionChoice(
                            index=index, text=chunk.text, finish_reason=reason, logprobs=logprobs
                        )
                    ],
                    timings=tr.timings([chunk.timings]),
                )
    except GatewayError as exc:
        yield _error_event(exc)
        yield tr.DONE
        return
    if include_usage:
        yield event(
            [],
            usage=tr.usage(usages, prompts=len(echoes) // body.n),
            timings=tr.timings(timings),
        )
    yield tr.DONE
