"""llama.cpp's native routes: thin handlers over the generation and embedding services."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

from gateway_schemas.llamacpp import (
    ApplyTemplateRequest,
    ChatTokenCountRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ErrorResponse,
    InfillRequest,
    LoraScale,
    NativeSampling,
    PropsUpdate,
    RerankRequest,
    ResponsesTokenCountRequest,
    SlotActionRequest,
    TokenCount,
    TokenizeRequest,
)
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Stream

from gateway import __version__
from gateway.engine import Backend, Capability
from gateway.errors import GatewayError, InvalidRequest, NotSupported
from gateway.gateway import Gateway
from gateway.routes.llamacpp import completion as cmpl
from gateway.routes.llamacpp import counting, lora, params
from gateway.routes.llamacpp import embeddings as emb
from gateway.routes.llamacpp import prompts as pr
from gateway.routes.llamacpp import translate as tr
from gateway.services.streams import SSE_HEADERS, primed

ERRORS = {
    400: ResponseSpec(ErrorResponse, description="Invalid request"),
    404: ResponseSpec(ErrorResponse, description="Unknown model"),
    501: ResponseSpec(ErrorResponse, description="Not supported (by this model or server)"),
    503: ResponseSpec(ErrorResponse, description="Model still loading"),
}
SLOT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MEDIA_MARKER = "<__media__>"


def _model(gateway: Gateway, requested: str | None, capability: Capability) -> str:
    """The model a native request runs on: the one named, else `[llamacpp] model_alias`,
    else the first configured model that has `capability`. An unknown name is a 404 that
    lists the served models, or with `unknown_models = "default"` gets the default."""
    alias = gateway.settings.llamacpp.model_alias
    handle = next((h for h in gateway.models if h.spec.name == alias), None)
    if handle is not None and capability not in handle.backend.capabilities:
        alias = None  # an alias that is not served stays: using it is the 404
    return gateway.model_for(requested, capability, default=alias)


class NativeController(Controller):
    path = "/"

    @post("/completion", status_code=200, responses=ERRORS)
    async def completion(
        self, data: JSONBody[CompletionRequest], gateway: NamedDependency[Gateway]
    ) -> Response[Any]:
        model = _model(gateway, data.model, Capability.GENERATE)
        backend = gateway.models.get(model)
        pieces = pr.split_prompts(data.prompt)
        prompts = [await pr.prompt_ids(backend, p) for p in pieces]
        written = [p if isinstance(p, str) else None for p in pieces]
        return await _complete(gateway, data, prompts, model, written)

    @post("/infill", status_code=200, responses=ERRORS)
    async def infill(
        self, data: JSONBody[InfillRequest], gateway: NamedDependency[Gateway]
    ) -> Response[Any]:
        model = _model(gateway, data.model, Capability.GENERATE)
        backend = gateway.models.get(model)
        tokens = await pr.fim_tokens(backend)  # 501 without fill-in-the-middle tokens
        ids = await pr.infill_ids(
            backend,
            tokens,
            prefix=data.input_prefix,
            suffix=data.input_suffix,
            extra=data.input_extra,
            prompt=data.prompt,
            n_ctx=_n_ctx(backend),
            n_predict=tr.n_predict(data, gateway.settings.llamacpp),
        )
        return await _complete(gateway, data, [ids], model)

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
        raw = await backend.token_bytes(ids)
        return {"tokens": [{"id": t, "piece": _piece(b)} for t, b in zip(ids, raw, strict=True)]}

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
        model = _model(gateway, data.model, Capability.CHAT)
        prompt = await counting.rendered_chat(gateway.models.get(model), data, model)
        return {"prompt": prompt}

    @post("/embedding", status_code=200, responses=ERRORS)
    async def embedding(
        self, data: JSONBody[EmbeddingRequest], gateway: NamedDependency[Gateway]
    ) -> list[dict[str, Any]]:
        backend = gateway.models.get(_model(gateway, data.model, Capability.EMBED))
        return await emb.native_embeddings(backend, data)

    @post(
        ["/rerank", "/v1/rerank", "/reranking", "/v1/reranking"], status_code=200, responses=ERRORS
    )
    async def rerank(
        self, data: JSONBody[RerankRequest], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        model = _model(gateway, data.model, Capability.EMBED)
        return await emb.rerank(gateway.models.get(model), model, data)

    @get("/props", responses=ERRORS)
    async def props(
        self, gateway: NamedDependency[Gateway], model: FromQuery[str | None] = None
    ) -> dict[str, Any]:
        name = _model(gateway, model, Capability.GENERATE)
        backend = gateway.models.get(name)
        knobs = gateway.settings.llamacpp
        slots = _slots_or_empty(backend)
        idle = {"id": 0, "n_ctx": slots[0]["n_ctx"] if slots else 0, "id_task": -1}
        defaults = params.slot_view(idle, knobs, name)
        defaults["params"]["lora"] = lora.default_ids(backend)
        return {
            "default_generation_settings": defaults,
            "total_slots": len(slots),
            "model_alias": knobs.model_alias or name,
            "model_path": backend.spec.source or name,
            "chat_template": backend.chat_template() or "",
            "chat_template_caps": {},
            "modalities": {"vision": False, "audio": False},
            "media_marker": MEDIA_MARKER,
            "build_info": f"gateway-{__version__}",
            "is_sleeping": False,
        }

    @post("/props", status_code=200, responses=ERRORS)
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

    @get("/lora-adapters", responses=ERRORS)
    async def lora_adapters(
        self, gateway: NamedDependency[Gateway], model: FromQuery[str | None] = None
    ) -> list[dict[str, Any]]:
        """The model's LoRA adapters, `[{"id", "path", "scale"}]`: `id` is the adapter's
        position in the list (sorted by name; it moves when adapters are added or removed),
        `path` its name, `scale` its scale in the server default (0: not applied)."""
        return lora.listing(gateway.models.get(_model(gateway, model, Capability.GENERATE)))

    @post("/lora-adapters", status_code=200, responses=ERRORS)
    async def set_lora_adapters(
        self,
        data: JSONBody[list[LoraScale]],
        gateway: NamedDependency[Gateway],
        model: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        """Set the server default, `[{"id", "scale"}]`: the adapters requests without
        `lora` run with (kept across restarts); one not listed, or with scale 0, is off."""
        backend = gateway.models.get(_model(gateway, model, Capability.GENERATE))
        lora.set_default(backend, data)
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
        name = _model(gateway, model, Capability.GENERATE)
        states = gateway.models.get(name).slots()
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
        return Response([params.slot_view(s, knobs, name) for s in states])

    @post("/slots/{id_slot:int}", status_code=200, responses=ERRORS)
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


class TokenCountController(Controller):
    """llama-server's token counting: `{"object": "response.input_tokens", "input_tokens"}`."""

    path = "/v1"

    @post("/chat/completions/input_tokens", status_code=200, responses=ERRORS)
    async def chat_input_tokens(
        self, data: JSONBody[ChatTokenCountRequest], gateway: NamedDependency[Gateway]
    ) -> TokenCount:
        model = _model(gateway, data.model, Capability.CHAT)
        backend = gateway.models.get(model)
        text = await counting.rendered_chat(backend, data, model)
        return TokenCount(input_tokens=await counting.prompt_tokens(backend, text))

    @post("/responses/input_tokens", status_code=200, responses=ERRORS)
    async def responses_input_tokens(
        self, data: JSONBody[ResponsesTokenCountRequest], gateway: NamedDependency[Gateway]
    ) -> TokenCount:
        backend = gateway.models.get(_model(gateway, data.model, Capability.CHAT))
        text = await backend.render_chat(counting.responses_messages(data))
        return TokenCount(input_tokens=await counting.prompt_tokens(backend, text))


async def _complete(
    gateway: Gateway,
    body: NativeSampling,
    prompts: list[list[int]],
    model: str,
    written: list[str | None] | None = None,
) -> Response[Any]:
    """Run `n_cmpl` completions of each prompt; one answer, a list of them, or a stream.
    `written`: each prompt as the client wrote it, when it was one text (`[recording]`
    keeps that rather than token ids)."""
    backend = gateway.models.get(model)
    knobs = gateway.settings.llamacpp
    n_cmpl = body.n_cmpl or body.n or 1
    slots = _slots_or_empty(backend)
    if n_cmpl > max(len(slots), 1):
        raise InvalidRequest(
            "n_cmpl cannot be greater than the number of slots, please increase -np"
        )
    bias = await tr.logit_bias(backend, body.logit_bias)
    n_ctx = slots[0]["n_ctx"] if slots else 0
    settings = params.generation_settings(
        body, knobs, bias=bias, end_tokens=backend.end_tokens(), n_ctx=n_ctx, model=model
    )
    adapters = lora.requested(backend, body.lora)
    rid = f"cmpl-{uuid.uuid4().hex}"
    ids = [p for p in prompts for _ in range(n_cmpl)]
    requests = [
        tr.generation_request(body, knobs, f"{rid}-{i}", model, prompt, bias, adapters)
        for i, prompt in enumerate(ids)
    ]
    if written is not None:
        each = [text for text in written for _ in range(n_cmpl)]
        for request, text in zip(requests, each, strict=True):
            if text:
                gateway.recording.note_text(request, text)
                gateway.recent.note_text(request, text)
    texts = [await backend.detokenize(p) for p in ids]
    chunks = await primed(gateway.generation.stream_many(requests))
    settings["lora"] = lora.served_ids(backend)  # known once the generations have started
    run = cmpl.Run(
        body=body, model=model, settings=settings, n_ctx=n_ctx, prompts=ids, prompt_texts=texts
    )
    if body.stream:
        ping = knobs.sse_ping_interval if body.sse_ping_interval is None else body.sse_ping_interval
        events = cmpl.events(run, requests, chunks, backend.abort)
        return Stream(
            cmpl.with_pings(events, ping), media_type="text/event-stream", headers=SSE_HEADERS
        )
    answers = await cmpl.collect(run, requests, chunks, backend.abort)
    return Response(answers[0] if len(answers) == 1 else answers)


def _n_ctx(backend: Backend) -> int:
    slots = _slots_or_empty(backend)
    return int(slots[0]["n_ctx"]) if slots else 0


def _piece(raw: bytes) -> str | list[int]:
    """A token's text, or its bytes when they are not valid UTF-8 on their own."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


def _slot_folder(gateway: Gateway) -> Path:
    configured = gateway.settings.llamacpp.slot_save_path
    return Path(configured).expanduser() if configured else gateway.settings.data_path() / "slots"


def _slots_or_empty(backend: Backend) -> list[dict[str, Any]]:
    try:
        return backend.slots()
    except GatewayError:
        return []
