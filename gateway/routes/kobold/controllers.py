"""KoboldCpp's generation, tokenizer, embedding and information routes: /api/v1 (and
/api/latest) and /api/extra. Bodies are read as KoboldCpp reads them (`body.read_body`);
`model` in a body is ignored, as KoboldCpp ignores it: generation uses `[kobold] model` or
the first model that generates, embeddings the first model that embeds (with none,
KoboldCpp's empty vectors). The story routes are in `stories`, the admin routes in
`admin`, the routes of capabilities this server lacks in `probes`.

Generation bodies may choose LoRA adapters with the gateway's `adapter` / `adapters` (as on
the OpenAI routes); each `results[]` item says which served it in `adapters`
(`[{"name", "scale"}]`, empty for the base model), as does the `X-Gateway-Adapters` header.

`/api/extra/shutdown` stops the server only with `[kobold] shutdown = true` (KoboldCpp's
`--singleinstance`), from loopback and not through a proxy; otherwise it answers
`{"success": false}`, as KoboldCpp answers any shutdown it refuses. Its admin scope (when
keys are set) is the access table's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from gateway_schemas.kobold import (
    DetokenizeRequest,
    ErrorResponse,
    GenerationInput,
    GenKey,
    JsonToGrammarRequest,
    KoboldEmbeddingRequest,
    TokenCountRequest,
)
from gateway_schemas.openai import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.response import Stream

from gateway import __version__
from gateway.adapters import served
from gateway.engine import Backend, Capability
from gateway.errors import GatewayError, Unsupported
from gateway.gateway import Gateway
from gateway.routes.kobold import translate as tr
from gateway.routes.kobold.body import documented, read_body
from gateway.routes.kobold.state import KoboldGeneration, KoboldState
from gateway.services.embeddings import embed
from gateway.services.streams import SSE_HEADERS, primed
from gateway.utils import is_loopback_host

KOBOLDAI_VERSION = "1.2.5"
KOBOLDCPP_VERSION = "1.95"
ERRORS = {
    400: ResponseSpec(ErrorResponse, description="Invalid request"),
    503: ResponseSpec(ErrorResponse, description="Server is busy"),
}
GENERATION_BODY = documented(GenerationInput)
NO_EMBEDDING_MODEL = "inactive"


class ServerBusy(GatewayError):
    status = 503
    kind = "service_unavailable"


def _model(gateway: Gateway) -> str:
    """The model the Kobold routes use (requests cannot choose: KoboldCpp ignores `model`):
    `[kobold] model`, else the first generating model."""
    name = gateway.settings.kobold.model
    if name:
        gateway.models.handle(name)
        return name
    return gateway.models.first_with(Capability.GENERATE)


def _context(gateway: Gateway, backend: Backend) -> int:
    configured = gateway.settings.kobold.max_context_length
    if configured:
        return configured
    try:
        slots = backend.slots()
    except GatewayError:
        slots = []
    return int(slots[0]["n_ctx"]) if slots else 2048


def _result(generation: KoboldGeneration, body: GenerationInput) -> dict[str, Any]:
    final = generation.final
    text = generation.text
    if final is not None and final.stop_word and not body.trim_stop:
        text += final.stop_word
    result: dict[str, Any] = {
        "text": text,
        "finish_reason": (final.finish_reason if final else None) or "abort",
    }
    if final is not None and final.usage is not None:
        result["prompt_tokens"] = final.usage.prompt_tokens
        result["completion_tokens"] = final.usage.completion_tokens
    if body.logprobs:
        result["logprobs"] = _logprobs(generation)
    adapters = served.first()
    if adapters is not None:  # the gateway's extension: what served it
        result["adapters"] = [{"name": r.name, "scale": r.scale} for r in adapters]
    return result


def _logprobs(generation: KoboldGeneration) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": lp.bytes,
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top
                ],
            }
            for lp in generation.logprobs
        ]
    }


def _genkey(raw: Any) -> str:
    """The `genkey` of a polling body; KoboldCpp reads any body, and a key that is not
    text matches no generation of its own."""
    key = raw.get("genkey") if isinstance(raw, dict) else None
    if key is None:
        return ""
    return key if isinstance(key, str) else json.dumps(key)


class KoboldController(Controller):
    path = "/api"

    async def _start(
        self, gateway: Gateway, kobold: KoboldState, body: GenerationInput
    ) -> tuple[KoboldGeneration, AsyncIterator[Any]]:
        """Reserve a place (503 when there is none), build the request, and start its
        stream: early errors surface here, before any response is sent."""
        knobs = gateway.settings.kobold
        if kobold.in_flight >= knobs.queue_limit:
            raise ServerBusy("Server is busy; please try again later.")
        kobold.in_flight += 1  # no await since the check: the reservation is atomic
        try:
            model = _model(gateway)
            backend = gateway.models.get(model)
            max_context, max_length = tr.limits(body, _context(gateway, backend), knobs.max_length)
            genkey = body.genkey or f"KCPP{uuid.uuid4().hex[:12]}"
            request_id = f"kobold-{genkey}-{uuid.uuid4().hex[:8]}"
            request = await tr.generation_request(
                backend, body, request_id, model, max_context, max_length
            )
        except BaseException:
            kobold.in_flight -= 1
            raise
        seed = request.sampling.seed if request.sampling.seed is not None else -1
        generation = KoboldGeneration(genkey=genkey, request_id=request_id, model=model, seed=seed)
        stream = gateway.generation.stream(request)
        return generation, await primed(self._run(kobold, generation, stream))

    async def _run(
        self, kobold: KoboldState, generation: KoboldGeneration, stream: AsyncIterator[Any]
    ) -> AsyncGenerator[Any]:
        """The stream's chunks, recorded on `generation`; releases the reservation at the end
        (also when the stream is dropped: a started async generator is closed on collection)."""
        kobold.begin(generation)
        try:
            async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    generation.add(chunk)
                    yield chunk
        finally:
            kobold.end(generation)

    @post(["/v1/generate", "/latest/generate"], status_code=200, responses=ERRORS)
    async def generate(
        self,
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, GENERATION_BODY] = None,
    ) -> dict[str, Any]:
        body = read_body(data, GenerationInput)
        generation, chunks = await self._start(gateway, kobold, body)
        async for _ in chunks:
            pass
        return {"results": [_result(generation, body)]}

    @post("/extra/generate/stream", status_code=200, responses=ERRORS)
    async def generate_stream(
        self,
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, GENERATION_BODY] = None,
    ) -> Stream:
        body = read_body(data, GenerationInput)
        _, chunks = await self._start(gateway, kobold, body)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    if chunk.text:
                        yield _event({"token": chunk.text})
                    if chunk.finish_reason is not None:
                        tail = chunk.stop_word if chunk.stop_word and not body.trim_stop else ""
                        yield _event({"token": tail, "finish_reason": chunk.finish_reason})
            except GatewayError as exc:
                yield _event({"token": "", "error": exc.message})

        return Stream(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @get(["/extra/generate/check"])
    async def check_latest(self, kobold: NamedDependency[KoboldState]) -> dict[str, Any]:
        generation = kobold.find("")
        return {"results": [{"text": generation.text if generation else ""}]}

    @post(["/extra/generate/check"], status_code=200)
    async def check(
        self,
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, documented(GenKey)] = None,
    ) -> dict[str, Any]:
        generation = kobold.find(_genkey(data))
        return {"results": [{"text": generation.text if generation else ""}]}

    @post("/extra/abort", status_code=200)
    async def abort(
        self,
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, documented(GenKey)] = None,
    ) -> dict[str, Any]:
        generation = kobold.find(_genkey(data))
        if generation is None or generation.final is not None:
            return {"success": False, "done": True}
        await gateway.models.get(generation.model).abort(generation.request_id)
        return {"success": True, "done": False}

    @post("/extra/last_logprobs", status_code=200)
    async def last_logprobs(
        self,
        kobold: NamedDependency[KoboldState],
        data: Annotated[Any, documented(GenKey)] = None,
    ) -> dict[str, Any]:
        generation = kobold.find(_genkey(data))
        return {"logprobs": _logprobs(generation) if generation else {"content": []}}

    @get(["/v1/model", "/latest/model"])
    async def model(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        return {"result": f"koboldcpp/{_model(gateway)}"}

    @get(["/v1/info/version", "/latest/info/version"])
    async def info_version(self) -> dict[str, Any]:
        return {"result": KOBOLDAI_VERSION}

    @get(["/v1/config/max_context_length", "/latest/config/max_context_length"])
    async def max_context_length(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        return {"value": _context(gateway, gateway.models.get(_model(gateway)))}

    @get(["/extra/true_max_context_length"])
    async def true_max_context_length(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        backend = gateway.models.get(_model(gateway))
        try:
            return {"value": int(backend.slots()[0]["n_ctx"])}
        except (GatewayError, IndexError):
            return {"value": _context(gateway, backend)}

    @get(["/v1/config/max_length", "/latest/config/max_length"])
    async def max_length(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        return {"value": gateway.settings.kobold.max_length}

    @get("/extra/version")
    async def version(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        embeddings = any(Capability.EMBED in h.backend.capabilities for h in gateway.models)
        return {
            "result": "KoboldCpp",
            "version": KOBOLDCPP_VERSION,
            "gateway": __version__,
            "protected": bool(gateway.settings.api_keys),
            "txt2img": False,
            "vision": False,
            "audio": False,
            "transcribe": False,
            "multiplayer": True,
            "websearch": False,
            "tts": False,
            "embeddings": embeddings,
            "savedata": True,
            "admin": 1 if gateway.settings.kobold.admin else 0,
        }

    @get("/extra/perf")
    async def perf(self, kobold: NamedDependency[KoboldState]) -> dict[str, Any]:
        return kobold.perf(KOBOLDCPP_VERSION)

    @post(["/extra/tokencount", "/extra/tokenize"], status_code=200)
    async def tokencount(
        self,
        gateway: NamedDependency[Gateway],
        data: Annotated[Any, documented(TokenCountRequest)] = None,
    ) -> dict[str, Any]:
        body = read_body(data, TokenCountRequest)
        backend = gateway.models.get(_model(gateway))
        ids = await backend.tokenize(body.prompt, add_special=body.special)
        return {"value": len(ids), "ids": ids}

    @post("/extra/detokenize", status_code=200)
    async def detokenize(
        self,
        gateway: NamedDependency[Gateway],
        data: Annotated[Any, documented(DetokenizeRequest)] = None,
    ) -> dict[str, Any]:
        body = read_body(data, DetokenizeRequest)
        text = await gateway.models.get(_model(gateway)).detokenize(body.ids) if body.ids else ""
        return {"result": text, "success": True}

    @post("/extra/json_to_grammar", status_code=200)
    async def json_to_grammar(
        self, data: Annotated[Any, documented(JsonToGrammarRequest)] = None
    ) -> dict[str, Any]:
        """The schema as a grammar that this server's `grammar` field accepts: llguidance's
        Lark dialect, whose `%json` rule embeds a JSON schema. As in KoboldCpp, a body
        without a `schema` is itself the schema."""
        schema = read_body(data, JsonToGrammarRequest).schema or data
        return {"result": f"start: %json {json.dumps(schema)}\n", "success": True}

    @post("/extra/embeddings", status_code=200)
    async def embeddings(
        self,
        gateway: NamedDependency[Gateway],
        data: Annotated[Any, documented(KoboldEmbeddingRequest)] = None,
    ) -> EmbeddingResponse:
        body = read_body(data, KoboldEmbeddingRequest)
        texts = [body.input] if isinstance(body.input, str) else body.input
        texts = [t for t in texts if t] if isinstance(body.input, str) else texts
        try:
            model = gateway.models.first_with(Capability.EMBED)
        except Unsupported:
            return _no_embeddings(NO_EMBEDDING_MODEL, texts)
        if not texts:
            return _no_embeddings(model, texts)
        request = EmbeddingRequest(
            model=model, input=list(texts), encoding_format=body.encoding_format
        )
        return await embed(gateway, request)

    @post("/extra/shutdown", status_code=200)
    async def shutdown(
        self, request: Request[Any, Any, Any], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        if not gateway.settings.kobold.shutdown or not _from_this_machine(request):
            return {"success": False}
        asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGINT)
        return {"success": True}


def _from_this_machine(request: Request[Any, Any, Any]) -> bool:
    """From loopback and not relayed: a reverse proxy on this host connects from loopback
    too, so a request carrying `X-Forwarded-For` or `Forwarded` counts as remote."""
    if "x-forwarded-for" in request.headers or "forwarded" in request.headers:
        return False
    return is_loopback_host(request.client.host if request.client else "")


def _no_embeddings(model: str, texts: list[str]) -> EmbeddingResponse:
    """What KoboldCpp answers without an embedding model (and for no input): an empty
    vector per input."""
    return EmbeddingResponse(
        data=[EmbeddingData(index=i, embedding=[]) for i in range(len(texts))],
        model=model,
        usage=EmbeddingUsage(prompt_tokens=0, total_tokens=0),
    )


def _event(data: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"
