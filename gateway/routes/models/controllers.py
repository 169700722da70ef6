"""The model manager's routes, in two dialects over one `ModelManager`.

NPU-STACK (`/v1/models/*`, FastAPI's `{"detail"}` errors): `POST /v1/models/load` and
`/v1/models/unload` with `{"name"}`, `GET /v1/models/status`. llama-server's router
(`/models/*`, its `{"error"}` shape): `POST /models/load` and `/models/unload` with
`{"model"}` answering `{"success": true}`, `GET /models/sse` (its model events).

`POST /v1/models` and `POST /models` (register a model at run time, `add_model`) share
their paths with the listings, so the OpenAI and llama.cpp families mount them beside
`GET /v1/models` and `GET /models` (one path, one router).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream
from msgspec import Meta

from gateway.engine import ModelHandle, ModelSpec, ModelState, memory
from gateway.errors import InvalidRequest
from gateway.gateway import Gateway
from gateway.routes.openai.errors import EXCEPTION_HANDLERS as ROUTER_HANDLERS
from gateway.routes.training.errors import NPU_HANDLERS
from gateway.services.streams import SSE_HEADERS

SSE_KEEPALIVE = 15.0
"""Seconds between comment lines on a quiet `GET /models/sse` (proxies close silent ones)."""


class ByName(msgspec.Struct, kw_only=True):
    """NPU-STACK's body: `{"name": ...}`."""

    name: Annotated[str, Meta(min_length=1)]
    abort: bool = False
    """Unload only: cancel the model's requests in flight instead of waiting for them."""


class ByModel(msgspec.Struct, kw_only=True):
    """llama-server's body: `{"model": ...}`."""

    model: Annotated[str, Meta(min_length=1)]
    abort: bool = False


class NewModel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A model to register at run time: a local GGUF file or Hugging Face folder, or an
    installed weights package (`source`; llama-server's `path` says the same)."""

    name: Annotated[str, Meta(min_length=1, pattern=r"^\S+$")] | None = None
    model: Annotated[str, Meta(min_length=1, pattern=r"^\S+$")] | None = None
    source: str | None = None
    path: str | None = None
    backend: str = "auto"
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    load: Literal["startup", "on_demand"] = "on_demand"
    pin: bool = False
    idle_timeout: Annotated[float, Meta(gt=0)] | None = None

    def spec(self, models_dir: str | None) -> ModelSpec:
        name = self.name or self.model
        source = self.source or self.path
        if not name:
            raise InvalidRequest("Give the model a `name`.", param="name")
        if not source:
            raise InvalidRequest(
                "Say where the weights are: `source` (a .gguf file, a Hugging Face folder "
                "or an installed weights package).",
                param="source",
            )
        if models_dir is not None:
            allowed = Path(models_dir).expanduser().resolve()
            where = Path(source).expanduser()
            if not where.is_absolute():
                where = allowed / where
            if not where.resolve().is_relative_to(allowed):
                raise InvalidRequest(
                    f"`{source}` is outside the models directory `[model_manager] models_dir`.",
                    param="source",
                )
            source = str(where.resolve())
        return ModelSpec(
            name=name,
            backend=self.backend,
            source=source,
            options=self.options,
            load=self.load,
            pin=self.pin,
            idle_timeout=self.idle_timeout,
        )


def overview(gateway: Gateway) -> dict[str, Any]:
    limits = gateway.models.limits
    return {
        "models": [handle.status() for handle in gateway.models],
        "loaded": sum(1 for h in gateway.models if h.state is ModelState.READY),
        "max_loaded": limits.max_loaded,
        "autoload": gateway.settings.model_manager.autoload,
        "memory_budget_bytes": limits.memory_budget,
        "resident_bytes": memory.resident(),
        "available_bytes": memory.available(),
    }


async def add_model(gateway: Gateway, data: NewModel) -> ModelHandle:
    spec = data.spec(gateway.settings.model_manager.models_dir)
    if spec.backend not in gateway.backends:
        known = ", ".join(sorted(gateway.backends))
        raise InvalidRequest(
            f"Unknown backend `{spec.backend}` (registered backends: {known}).", param="backend"
        )
    await asyncio.to_thread(_check_source, spec)
    return gateway.models.add(spec)


def _check_source(spec: ModelSpec) -> None:
    """A source that is neither a path nor an installed package fails now, not at load."""
    path = Path(spec.source).expanduser()
    if path.exists():
        return
    from importlib.util import find_spec

    module = spec.source.replace("-", "_")
    found = None
    if all(part.isidentifier() for part in module.split(".")):
        with contextlib.suppress(ImportError, ValueError):
            found = find_spec(module)
    if found is None:
        raise InvalidRequest(
            f"`{spec.source}` is neither an existing path nor an installed weights package.",
            param="source",
        )


class NpuModelsController(Controller):
    """NPU-STACK's model manager routes."""

    path = "/v1/models"
    exception_handlers = NPU_HANDLERS

    @post("/load", status_code=200)
    async def load(
        self, data: JSONBody[ByName], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        handle = await gateway.models.load(data.name)
        return {"success": True, "message": f"Model `{data.name}` loaded.", **handle.status()}

    @post("/unload", status_code=200)
    async def unload(
        self, data: JSONBody[ByName], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        handle = await gateway.models.unload(data.name, abort=data.abort)
        return {
            "success": True,
            "message": f"Model `{data.name}` unloaded.",
            "freed_bytes": handle.freed,
            **handle.status(),
        }

    @get("/status")
    async def status(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        return overview(gateway)


class RouterModelsController(Controller):
    """llama-server's router routes."""

    path = "/models"
    exception_handlers = ROUTER_HANDLERS

    @post("/load", status_code=200)
    async def load(
        self, data: JSONBody[ByModel], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        await gateway.models.load(data.model)
        return {"success": True}

    @post("/unload", status_code=200)
    async def unload(
        self, data: JSONBody[ByModel], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        await gateway.models.unload(data.model, abort=data.abort)
        return {"success": True}

    @get("/sse")
    async def events(self, gateway: NamedDependency[Gateway]) -> Stream:
        return Stream(_events(gateway), media_type="text/event-stream", headers=SSE_HEADERS)


async def _events(gateway: Gateway) -> AsyncIterator[bytes]:
    """Each model's status now, then every change, as llama-server's `data:` lines."""
    with gateway.models.events() as queue:
        for handle in gateway.models:
            now = {
                "model": handle.name,
                "event": "model_status",
                "data": {"status": handle.router_status()["value"]},
            }
            yield b"data: " + msgspec.json.encode(now) + b"\n\n"
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            yield b"data: " + msgspec.json.encode(event) + b"\n\n"
