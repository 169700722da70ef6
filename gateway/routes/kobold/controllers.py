"""KoboldCpp's routes: /api/v1 (and /api/latest), /api/extra, /api/admin."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from gateway_schemas.kobold import (
    DataLoadRequest,
    DataSaveRequest,
    DetokenizeRequest,
    ErrorResponse,
    GenerationInput,
    GenKey,
    JsonToGrammarRequest,
    MultiplayerStatusRequest,
    ReloadConfigRequest,
    SetStoryRequest,
    StateRequest,
    TokenCountRequest,
)
from gateway_schemas.openai import EmbeddingRequest, EmbeddingResponse
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from litestar.response import Stream

from gateway import __version__
from gateway.engine import Backend, Capability
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotSupported,
    PermissionDenied,
)
from gateway.gateway import Gateway
from gateway.routes.kobold import translate as tr
from gateway.routes.kobold.state import KoboldGeneration, KoboldState, SavedState
from gateway.services.embeddings import embed
from gateway.services.streams import SSE_HEADERS, primed

KOBOLDAI_VERSION = "1.2.5"
KOBOLDCPP_VERSION = "1.95"
ERRORS = {
    400: ResponseSpec(ErrorResponse, description="Invalid request"),
    503: ResponseSpec(ErrorResponse, description="Server is busy"),
}
CONFIG_FILE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.toml$"


class ServerBusy(GatewayError):
    status = 503
    kind = "service_unavailable"


def _model(gateway: Gateway, requested: str | None = None) -> str:
    name = requested or gateway.settings.kobold.model
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


def _slot_number(raw: int | str, slots: int) -> int:
    try:
        slot = int(raw)
    except ValueError:
        raise InvalidRequest(f"`slot` must be a number from 0 to {slots - 1}.") from None
    if not 0 <= slot < slots:
        raise InvalidRequest(f"`slot` must be a number from 0 to {slots - 1}.")
    return slot


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
            model = _model(gateway, body.model)
            backend = gateway.models.get(model)
            max_length = body.max_length or knobs.max_length
            max_context = body.max_context_length or _context(gateway, backend)
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
        data: JSONBody[GenerationInput],
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
    ) -> dict[str, Any]:
        generation, chunks = await self._start(gateway, kobold, data)
        async for _ in chunks:
            pass
        return {"results": [_result(generation, data)]}

    @post("/extra/generate/stream", status_code=200, responses=ERRORS)
    async def generate_stream(
        self,
        data: JSONBody[GenerationInput],
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
    ) -> Stream:
        _, chunks = await self._start(gateway, kobold, data)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    if chunk.text:
                        yield _event({"token": chunk.text})
                    if chunk.finish_reason is not None:
                        tail = chunk.stop_word if chunk.stop_word and not data.trim_stop else ""
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
        self, kobold: NamedDependency[KoboldState], data: JSONBody[GenKey | None] = None
    ) -> dict[str, Any]:
        generation = kobold.find(data.genkey if data else "")
        return {"results": [{"text": generation.text if generation else ""}]}

    @post("/extra/abort", status_code=200)
    async def abort(
        self,
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
        data: JSONBody[GenKey | None] = None,
    ) -> dict[str, Any]:
        generation = kobold.find(data.genkey if data else "")
        if generation is None or generation.final is not None:
            return {"success": False, "done": True}
        await gateway.models.get(generation.model).abort(generation.request_id)
        return {"success": True, "done": False}

    @post("/extra/last_logprobs", status_code=200)
    async def last_logprobs(
        self, kobold: NamedDependency[KoboldState], data: JSONBody[GenKey | None] = None
    ) -> dict[str, Any]:
        generation = kobold.find(data.genkey if data else "")
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

    @get("/extra/preloadstory")
    async def preload_story(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        path = gateway.settings.kobold.preload_story
        if not path:
            return {}
        try:
            story: dict[str, Any] = json.loads(Path(path).expanduser().read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidRequest(f"The preloaded story could not be read: {exc}") from exc
        return story

    @post(["/extra/tokencount", "/extra/tokenize"], status_code=200)
    async def tokencount(
        self, data: JSONBody[TokenCountRequest], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        ids = await gateway.models.get(_model(gateway)).tokenize(data.prompt, add_special=True)
        return {"value": len(ids), "ids": ids}

    @post("/extra/detokenize", status_code=200)
    async def detokenize(
        self, data: JSONBody[DetokenizeRequest], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        text = await gateway.models.get(_model(gateway)).detokenize(data.ids)
        return {"result": text, "success": True}

    @post("/extra/json_to_grammar", status_code=200)
    async def json_to_grammar(self, data: JSONBody[JsonToGrammarRequest]) -> dict[str, Any]:
        """The schema as a grammar that this server's `grammar` field accepts: llguidance's
        Lark dialect, whose `%json` rule embeds a JSON schema."""
        try:
            text = json.dumps(data.schema)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"Invalid schema: {exc}") from exc
        return {"result": f"start: %json {text}\n", "success": True}

    @post("/extra/embeddings", status_code=200)
    async def embeddings(
        self, data: JSONBody[EmbeddingRequest], gateway: NamedDependency[Gateway]
    ) -> EmbeddingResponse:
        return await embed(gateway, data)

    @post("/extra/data/save", status_code=200)
    async def data_save(
        self,
        data: JSONBody[DataSaveRequest],
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
    ) -> dict[str, Any]:
        slot = _slot_number(data.slot, gateway.settings.kobold.save_slots)
        await kobold.store.save_story(slot, data.title, data.format, data.data)
        return {"success": True, "error": ""}

    @post("/extra/data/load", status_code=200)
    async def data_load(
        self,
        data: JSONBody[DataLoadRequest],
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
    ) -> dict[str, Any]:
        slot = _slot_number(data.slot, gateway.settings.kobold.save_slots)
        row = await kobold.store.load_story(slot)
        if row is None:
            return {"success": False, "data": "", "error": f"Slot {slot} is empty."}
        return {
            "success": True,
            "data": row["data"],
            "title": row["title"],
            "format": row["format"],
        }

    @post("/extra/data/list", status_code=200)
    async def data_list(
        self, gateway: NamedDependency[Gateway], kobold: NamedDependency[KoboldState]
    ) -> list[str]:
        return await kobold.store.story_titles(gateway.settings.kobold.save_slots)

    @post("/extra/multiplayer/status", status_code=200)
    async def multiplayer_status(
        self,
        kobold: NamedDependency[KoboldState],
        data: JSONBody[MultiplayerStatusRequest | None] = None,
    ) -> dict[str, Any]:
        row = await kobold.store.multiplayer()
        # Turns as strings: koboldcpp-openapi.json types them so.
        return {
            "turn_major": str(row["turn_major"] if row else 0),
            "turn_minor": str(row["turn_minor"] if row else 0),
            "idle": int(time.time() - row["updated"]) if row else 0,
            "data_format": row["data_format"] if row else "",
        }

    @post("/extra/multiplayer/getstory", status_code=200)
    async def multiplayer_getstory(self, kobold: NamedDependency[KoboldState]) -> dict[str, Any]:
        row = await kobold.store.multiplayer()
        if row is None:
            return {}
        return {
            "data": row["data"],
            "data_format": row["data_format"],
            "turn_major": row["turn_major"],
            "turn_minor": row["turn_minor"],
            "sender": row["sender"],
        }

    @post("/extra/multiplayer/setstory", status_code=200)
    async def multiplayer_setstory(
        self, data: JSONBody[SetStoryRequest], kobold: NamedDependency[KoboldState]
    ) -> dict[str, Any]:
        row = await kobold.store.set_multiplayer(
            data.data, data.data_format, data.sender, data.full_update
        )
        return {
            "success": True,
            "turn_major": str(row["turn_major"]),
            "turn_minor": str(row["turn_minor"]),
            "idle": 0,
            "data_format": row["data_format"],
        }

    @post("/extra/shutdown", status_code=200)
    async def shutdown(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        host = request.client.host if request.client else ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise PermissionDenied("Shutting the server down is only allowed from loopback.")
        asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGINT)
        return {"success": True}


class KoboldAdminController(Controller):
    """`/api/admin/*`: admin scope, and only when `[kobold] admin = true`."""

    path = "/api/admin"
    opt = {"scope": "admin"}

    @get("/list_options")
    async def list_options(self, gateway: NamedDependency[Gateway]) -> list[str]:
        return sorted(p.name for p in _admin_dir(gateway).glob("*.toml"))

    @post("/reload_config", status_code=200)
    async def reload_config(
        self, data: JSONBody[ReloadConfigRequest], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        import re

        from gateway.settings import load_settings

        folder = _admin_dir(gateway)
        if not re.match(CONFIG_FILE, data.filename) or not (folder / data.filename).is_file():
            raise InvalidRequest(f"No config `{data.filename}` in the admin directory.")
        settings = await asyncio.to_thread(load_settings, folder / data.filename)
        await gateway.models.replace(
            settings.served_models(), gateway.backends, gateway.settings.data_path()
        )
        return {"success": True}

    @post("/check_state", status_code=200)
    async def check_state(
        self, gateway: NamedDependency[Gateway], kobold: NamedDependency[KoboldState]
    ) -> dict[str, Any]:
        _admin_dir(gateway)
        last = kobold.last
        tokens = last.final.usage.prompt_tokens if last and last.final and last.final.usage else 0
        old = [
            {"tokens": kobold.saved[i].tokens, "size": kobold.saved[i].size}
            if i in kobold.saved
            else {"tokens": 0, "size": 0}
            for i in range(3)
        ]
        return {"success": True, "old_states": old, "new_state_size": 0, "new_tokens": tokens}

    @post("/save_state", status_code=200)
    async def save_state(
        self,
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
        data: JSONBody[StateRequest | None] = None,
    ) -> dict[str, Any]:
        _admin_dir(gateway)
        index = data.slot if data else 0
        last = kobold.last
        if last is None or last.final is None or last.final.slot is None:
            raise InvalidRequest("There is no finished generation whose context could be saved.")
        backend = gateway.models.get(last.model)
        path = _state_path(gateway, index)
        result = await backend.slot_action(last.final.slot, "save", path)
        kobold.saved[index] = SavedState(
            tokens=int(result.get("n_saved", 0)),
            size=int(result.get("n_written", 0)),
            slot=last.final.slot,
            model=last.model,
        )
        return {
            "success": True,
            "new_state_size": kobold.saved[index].size,
            "new_tokens": kobold.saved[index].tokens,
        }

    @post("/load_state", status_code=200)
    async def load_state(
        self,
        gateway: NamedDependency[Gateway],
        kobold: NamedDependency[KoboldState],
        data: JSONBody[StateRequest | None] = None,
    ) -> dict[str, Any]:
        _admin_dir(gateway)
        index = data.slot if data else 0
        saved = kobold.saved.get(index)
        if saved is None:
            raise InvalidRequest(f"No state saved in state slot {index}.")
        backend = gateway.models.get(saved.model)
        result = await backend.slot_action(saved.slot, "restore", _state_path(gateway, index))
        return {"success": True, "new_tokens": int(result.get("n_restored", 0))}

    @post("/clear_state", status_code=200)
    async def clear_state(
        self, gateway: NamedDependency[Gateway], kobold: NamedDependency[KoboldState]
    ) -> dict[str, Any]:
        _admin_dir(gateway)
        for index in list(kobold.saved):
            _state_path(gateway, index).unlink(missing_ok=True)
        kobold.saved.clear()
        return {"success": True}


def _admin_dir(gateway: Gateway) -> Path:
    knobs = gateway.settings.kobold
    if not knobs.admin:
        raise NotSupported("The admin API is off ([kobold] admin = false).")
    folder = knobs.admin_dir
    return Path(folder).expanduser() if folder else gateway.settings.data_path() / "kobold-configs"


def _state_path(gateway: Gateway, index: int) -> Path:
    return gateway.settings.data_path() / "kobold-states" / f"state-{index}.bin"


def _event(data: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


UNPROVIDED = {
    "/sdapi/v1/sd-models": "image generation",
    "/sdapi/v1/options": "image generation",
    "/sdapi/v1/samplers": "image generation",
    "/sdapi/v1/txt2img": "image generation",
    "/sdapi/v1/img2img": "image generation",
    "/sdapi/v1/interrogate": "image captioning",
    "/api/extra/transcribe": "speech-to-text transcription",
    "/api/extra/tts": "text-to-speech",
    "/api/extra/websearch": "web search",
    "/v1/audio/transcriptions": "speech-to-text transcription",
    "/v1/audio/speech": "text-to-speech",
}


class UnprovidedController(Controller):
    """Image, audio and web-search routes of KoboldCpp: 501 until a plugin provides them."""

    path = "/"

    @get(["/sdapi/v1/sd-models", "/sdapi/v1/options", "/sdapi/v1/samplers"])
    async def unprovided_get(self, request: Request[Any, Any, Any]) -> None:
        raise _unprovided(request.url.path)

    @post(
        [
            p
            for p in UNPROVIDED
            if p not in {"/sdapi/v1/sd-models", "/sdapi/v1/options", "/sdapi/v1/samplers"}
        ],
        status_code=200,
    )
    async def unprovided_post(self, request: Request[Any, Any, Any]) -> None:
        raise _unprovided(request.url.path)

    @get("/.well-known/serviceinfo", opt={"public": True})
    async def serviceinfo(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        return {
            "version": "0.2",
            "software": {
                "name": "gateway",
                "version": __version__,
                "repository": "",
                "homepage": "",
            },
            "api": {
                "koboldai": {"name": "KoboldAI API", "rel_url": "/api", "documentation": ""},
                "openai": {"name": "OpenAI API", "rel_url": "/v1", "documentation": ""},
            },
        }


class KoboldPropsController(Controller):
    """`GET /props` with the chat template, when the llama.cpp family does not serve it."""

    path = "/"

    @get("/props")
    async def props(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        backend = gateway.models.get(_model(gateway))
        return {"chat_template": backend.chat_template() or ""}


def _unprovided(path: str) -> NotSupported:
    capability = UNPROVIDED.get(path, "this capability")
    return NotSupported(
        f"This server has no {capability} ({path}). A gateway plugin can provide it: "
        "register a route family with the `register_routes` hook."
    )
