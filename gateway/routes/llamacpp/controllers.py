"""llama.cpp's native routes: thin handlers over the generation and embedding services."""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from gateway_schemas.canonical import ChatMessage, GenerationChunk, GenerationRequest
from gateway_schemas.llamacpp import (
    ApplyTemplateRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ErrorResponse,
    InfillRequest,
    PropsUpdate,
    RerankRequest,
    SlotActionRequest,
    TokenizeRequest,
)
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Stream
from msgspec import UNSET

from gateway.engine import Backend, Capability
from gateway.errors import GatewayError, InvalidRequest, NotSupported
from gateway.gateway import Gateway
from gateway.routes.llamacpp import translate as tr
from gateway.services.generation import Generation
from gateway.services.streams import SSE_HEADERS, primed

ERRORS = {
    400: ResponseSpec(ErrorResponse, description="Invalid request"),
    404: ResponseSpec(ErrorResponse, description="Unknown model"),
    503: ResponseSpec(ErrorResponse, description="Model still loading"),
}
FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
SLOT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _model(gateway: Gateway, requested: str | None, capability: Capability) -> str:
    """The model a native request runs on: the one named, else `[llamacpp] model_alias`,
    else the first configured model that has `capability`. An unknown name is a 404 that
    lists the served models, or with `unknown_models = "default"` gets the default."""
    if requested and (
        requested in {h.spec.name for h in gateway.models}
        or gateway.settings.unknown_models == "reject"
    ):
        return gateway.model_for(requested, capability)
    alias = gateway.settings.llamacpp.model_alias
    if alias and capability in gateway.models.handle(alias).backend.capabilities:
        return alias
    return gateway.models.first_with(capability)


def _data(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


def _timings(chunk: GenerationChunk) -> dict[str, Any]:
    return chunk.timings.to_dict() if chunk.timings is not None else {}


def _final_fields(
    body: Any, model: str, final: GenerationChunk, generation_settings: dict[str, Any]
) -> dict[str, Any]:
    usage = final.usage
    prompt_tokens = usage.prompt_tokens if usage is not None else 0
    return {
        "id_slot": body.id_slot,
        "stop": True,
        "model": model,
        "tokens_predicted": usage.completion_tokens if usage is not None else 0,
        "tokens_evaluated": prompt_tokens,
        "tokens_cached": usage.cached_tokens if usage is not None else 0,
        "generation_settings": generation_settings,
        "has_new_line": False,
        "truncated": False,
        "stop_type": tr.stop_type(final),
        "stopping_word": final.stop_word or "",
        "timings": _timings(final),
    }


def _settings_of(request: GenerationRequest) -> dict[str, Any]:
    s = request.sampling
    return {
        "n_predict": -1 if request.max_tokens is None else request.max_tokens,
        "seed": -1 if s.seed is None else s.seed,
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "typical_p": s.typical_p,
        "repeat_penalty": s.repeat_penalty,
        "repeat_last_n": s.penalty_last_n,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "stop": request.stop,
        "ignore_eos": request.ignore_eos,
        "n_probs": request.top_logprobs,
        "cache_prompt": request.cache_prompt,
    }


class NativeController(Controller):
    path = "/"

    async def _generate(
        self, gateway: Gateway, body: Any, prompt: str | list[int], model: str
    ) -> Response[Any]:
        backend = gateway.models.get(model)
        request = await tr.generation_request(
            backend,
            body,
            gateway.settings.llamacpp,
            f"cmpl-{uuid.uuid4().hex}",
            model,
            prompt,
        )
        settings = _settings_of(request)
        if body.stream:
            chunks = await primed(gateway.generation.stream_many([request]))
            return Stream(
                _native_events(body, model, chunks, settings),
                media_type="text/event-stream",
                headers=SSE_HEADERS,
            )
        result = await gateway.generation.complete(request)
        out = _completion_body(body, model, result, settings)
        return Response(tr.pick_fields(out, body.response_fields))

    @post("/completion", status_code=200, responses=ERRORS)
    async def completion(
        self, data: JSONBody[CompletionRequest], gateway: NamedDependency[Gateway]
    ) -> Response[Any]:
        model = _model(gateway, data.model, Capability.GENERATE)
        prompt = await tr.prompt_ids(gateway.models.get(model), data.prompt)
        return await self._generate(gateway, data, prompt, model)

    @post("/infill", status_code=200, responses=ERRORS)
    async def infill(
        self, data: JSONBody[InfillRequest], gateway: NamedDependency[Gateway]
    ) -> Response[Any]:
        model = _model(gateway, data.model, Capability.GENERATE)
        backend = gateway.models.get(model)
        prefix, suffix, middle = [await _single_token(backend, name) for name in FIM_TOKENS]
        extra = "".join(f"{e.filename}\n{e.text}\n" for e in data.input_extra)
        ids = [prefix, *await backend.tokenize(extra + data.input_prefix, add_special=False)]
        ids += [suffix, *await backend.tokenize(data.input_suffix, add_special=False)]
        ids += [middle, *await backend.tokenize(data.prompt, add_special=False)]
        return await self._generate(gateway, data, ids, model)

    @post("/tokenize", status_code=200, responses=ERRORS)
    async def tokenize(
        self, data: JSONBody[TokenizeRequest], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        backend = gateway.models.get(_model(gateway, data.model, Capability.TOKENIZE))
        ids = await backend.tokenize(
            data.content, add_special=data.add_special, parse_special=data.parse_special
        )
        if not data.with_pieces:
            return {"tokens": ids}
        pieces = []
        for token in ids:
            piece = await backend.detokenize([token])
            value: Any = list(piece.encode()) if "\ufffd" in piece else piece
            pieces.append({"id": token, "piece": value})
        return {"tokens": pieces}

    @post("/detokenize", status_code=200, responses=ERRORS)
    async def detokenize(
        self, data: JSONBody[DetokenizeRequest], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        backend = gateway.models.get(_model(gateway, data.model, Capability.TOKENIZE))
        return {"content": await backend.detokenize(data.tokens)}

    @post("/apply-template", status_code=200, responses=ERRORS)
    async def apply_template(
        self, data: JSONBody[ApplyTemplateRequest], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        backend = gateway.models.get(_model(gateway, data.model, Capability.CHAT))
        messages = [ChatMessage(role=m.role, content=m.content or "") for m in data.messages]
        return {"prompt": await backend.render_chat(messages)}

    @post(["/embedding"], status_code=200, responses=ERRORS)
    async def embedding(
        self, data: JSONBody[EmbeddingRequest], gateway: NamedDependency[Gateway]
    ) -> list[dict[str, Any]]:
        texts = _embedding_texts(data)
        backend = gateway.models.get(_model(gateway, data.model, Capability.EMBED))
        result = await backend.embed(texts)
        return [
            {"index": i, "embedding": [_normalize(v, data.embd_normalize)]}
            for i, v in enumerate(result.vectors)
        ]

    @post(
        ["/rerank", "/v1/rerank", "/reranking", "/v1/reranking"], status_code=200, responses=ERRORS
    )
    async def rerank(
        self, data: JSONBody[RerankRequest], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        model = _model(gateway, data.model, Capability.EMBED)
        result = await gateway.models.get(model).embed([data.query, *data.documents])
        query, *documents = (_normalize(v, 2) for v in result.vectors)
        scores = [sum(a * b for a, b in zip(query, d, strict=True)) for d in documents]
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        top = order[: data.top_n] if data.top_n else order
        return {
            "model": model,
            "object": "list",
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
            "results": [{"index": i, "relevance_score": scores[i]} for i in top],
        }

    @get("/props", responses=ERRORS)
    async def props(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        model = _model(gateway, None, Capability.GENERATE)
        backend = gateway.models.get(model)
        knobs = gateway.settings.llamacpp
        slots = _slots_or_empty(backend)
        n_ctx = slots[0]["n_ctx"] if slots else 0
        return {
            "default_generation_settings": {
                "id": 0,
                "n_ctx": n_ctx,
                "params": {
                    "n_predict": knobs.n_predict,
                    "seed": knobs.seed,
                    "temperature": knobs.temperature,
                    "top_k": 40,
                    "top_p": 0.95,
                    "min_p": 0.05,
                    "typical_p": 1.0,
                    "repeat_penalty": 1.0,
                    "repeat_last_n": 64,
                },
            },
            "total_slots": len(slots),
            "model_alias": knobs.model_alias or model,
            "model_path": backend.spec.source or model,
            "chat_template": backend.chat_template() or "",
            "modalities": {"vision": False, "audio": False},
            "build_info": "gateway",
        }

    @post("/props", status_code=200, responses=ERRORS, opt={"scope": "admin"})
    async def set_props(
        self, data: JSONBody[PropsUpdate], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        knobs = gateway.settings.llamacpp
        if not knobs.props:
            raise NotSupported(
                "This server does not support changing global properties "
                "([llamacpp] props = false)."
            )
        if data.n_predict is not None:
            knobs.n_predict = data.n_predict
        if data.temperature is not None:
            knobs.temperature = data.temperature
        if data.seed is not None:
            knobs.seed = data.seed
        return {"success": True}

    @get("/slots", responses=ERRORS)
    async def slots(
        self,
        gateway: NamedDependency[Gateway],
        fail_on_no_slot: FromQuery[int] = 0,
        model: FromQuery[str | None] = None,
    ) -> Response[Any]:
        knobs = gateway.settings.llamacpp
        if not knobs.slots:
            raise NotSupported(
                "This server does not support slots endpoint ([llamacpp] slots = false)."
            )
        backend = gateway.models.get(_model(gateway, model, Capability.GENERATE))
        states = backend.slots()
        if fail_on_no_slot and all(s["is_processing"] for s in states):
            return Response(
                {
                    "error": {
                        "code": 503,
                        "message": "no slot available",
                        "type": "unavailable_error",
                    }
                },
                status_code=503,
            )
        return Response(states)

    @post("/slots/{id_slot:int}", status_code=200, responses=ERRORS, opt={"scope": "admin"})
    async def slot_action(
        self,
        id_slot: FromPath[int],
        action: FromQuery[str],
        gateway: NamedDependency[Gateway],
        data: JSONBody[SlotActionRequest | None] = None,
        model: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        knobs = gateway.settings.llamacpp
        if not knobs.slots:
            raise NotSupported(
                "This server does not support slots endpoint ([llamacpp] slots = false)."
            )
        if action not in ("save", "restore", "erase"):
            raise InvalidRequest(f"Invalid action `{action}`: use save, restore or erase.")
        backend = gateway.models.get(_model(gateway, model, Capability.GENERATE))
        filename = data.filename if data is not None else ""
        folder = _slot_folder(gateway)
        path = folder / "unused"
        if action != "erase":
            if not SLOT_FILE.match(filename) or ".." in filename:
                raise InvalidRequest(
                    f"Invalid filename `{filename}`: letters, digits, `.`, `_` and `-` only."
                )
            path = folder / filename
        started = time.perf_counter()
        result = await backend.slot_action(id_slot, action, path)  # type: ignore[arg-type]
        elapsed = (time.perf_counter() - started) * 1000.0
        out: dict[str, Any] = {"id_slot": id_slot, **result}
        if action != "erase":
            out["filename"] = filename
            out["timings"] = {f"{action}_ms": elapsed}
        return out


def _slot_folder(gateway: Gateway) -> Path:
    configured = gateway.settings.llamacpp.slot_save_path
    return Path(configured).expanduser() if configured else gateway.settings.data_path() / "slots"


def _slots_or_empty(backend: Backend) -> list[dict[str, Any]]:
    try:
        return backend.slots()
    except GatewayError:
        return []


async def _single_token(backend: Backend, text: str) -> int:
    """The id of `text` when it is one special token of the model's vocabulary."""
    ids = await backend.tokenize(text, add_special=False)
    if len(ids) != 1 or await backend.detokenize(ids) != text:
        raise InvalidRequest(
            f"Model `{backend.spec.name}` has no fill-in-the-middle tokens "
            f"({', '.join(FIM_TOKENS)}), so it cannot infill."
        )
    return ids[0]


def _embedding_texts(data: EmbeddingRequest) -> list[str]:
    raw = data.content if data.content is not UNSET else data.input
    if raw is UNSET:
        raise InvalidRequest("Missing required field `content`.")
    texts = [raw] if isinstance(raw, str) else list(raw)
    if not texts or any(not t for t in texts):
        raise InvalidRequest("`content` must be non-empty text or a list of non-empty texts.")
    return texts


def _normalize(vector: Sequence[float], mode: int) -> list[float]:
    """llama.cpp's `embd_normalize`: -1 none, 0 max-abs (int16 range), 1 taxicab,
    2 Euclidean, p > 2 the p-norm."""
    if mode < 0:
        return list(vector)
    if mode == 0:
        scale = max((abs(x) for x in vector), default=0.0) / 32760.0
    elif mode == 1:
        scale = sum(abs(x) for x in vector)
    elif mode == 2:
        scale = math.sqrt(sum(x * x for x in vector))
    else:
        scale = sum(abs(x) ** mode for x in vector) ** (1.0 / mode)
    return [x / scale for x in vector] if scale > 0 else list(vector)


def _completion_body(
    body: Any, model: str, result: Generation, settings: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"index": 0, "content": result.text, "tokens": []}
    if body.return_tokens:
        out["tokens"] = result.token_ids
    out |= _final_fields(body, model, result.final, settings)
    out["prompt"] = ""
    if body.n_probs > 0:
        out["completion_probabilities"] = tr.probabilities(
            result.logprobs, body.post_sampling_probs
        )
    return out


async def _native_events(
    body: Any,
    model: str,
    chunks: AsyncIterator[tuple[int, GenerationChunk]],
    settings: dict[str, Any],
) -> AsyncIterator[bytes]:
    predicted = 0
    started = time.perf_counter()
    try:
        async for _, chunk in chunks:
            predicted += len(chunk.token_ids)
            if chunk.finish_reason is not None:
                last: dict[str, Any] = {"index": 0, "content": chunk.text, "tokens": []}
                if body.return_tokens:
                    last["tokens"] = chunk.token_ids
                last |= _final_fields(body, model, chunk, settings)
                if body.n_probs > 0:
                    last["completion_probabilities"] = tr.probabilities(
                        chunk.logprobs, body.post_sampling_probs
                    )
                yield _data(tr.pick_fields(last, body.response_fields))
                return
            event: dict[str, Any] = {
                "index": 0,
                "content": chunk.text,
                "tokens": chunk.token_ids if body.return_tokens else [],
                "stop": False,
                "id_slot": body.id_slot,
                "tokens_predicted": predicted,
            }
            if body.n_probs > 0:
                event["completion_probabilities"] = tr.probabilities(
                    chunk.logprobs, body.post_sampling_probs
                )
            if body.timings_per_token:
                elapsed = (time.perf_counter() - started) * 1000.0
                event["timings"] = {
                    "predicted_n": predicted,
                    "predicted_ms": elapsed,
                    "predicted_per_second": predicted / elapsed * 1000.0 if elapsed else 0.0,
                }
            yield _data(event)
    except GatewayError as exc:
        yield _data({"error": {"code": exc.status, "message": exc.message, "type": exc.kind}})
