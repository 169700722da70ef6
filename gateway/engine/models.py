"""The registry of configured models and their load state."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.engine.backend import Backend, BackendFactory, Capability, ModelSpec
from gateway.errors import (
    BackendFailure,
    ConfigError,
    ModelNotFound,
    ModelNotReady,
    Unsupported,
)

log = logging.getLogger("gateway.models")


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ModelHandle:
    spec: ModelSpec
    backend: Backend
    state: ModelState = ModelState.LOADING
    error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    load_seconds: float | None = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.spec.name,
            "backend": self.spec.backend,
            "state": self.state.value,
        }
        if self.load_seconds is not None:
            info["load_seconds"] = round(self.load_seconds, 3)
        if self.error:
            info["error"] = self.error
        if self.state is ModelState.READY:
            info.update(self.backend.health())
        return info


class ModelManager:
    """Builds a backend per configured model and loads them in the background."""

    def __init__(
        self, specs: list[ModelSpec], factories: Mapping[str, BackendFactory], data_dir: Path
    ):
        self._handles: dict[str, ModelHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        for spec in specs:
            if spec.name in self._handles:
                raise ConfigError(f"models: the name `{spec.name}` is declared twice")
            factory = factories.get(spec.backend)
            if factory is None:
                known = ", ".join(sorted(factories)) or "none"
                raise ConfigError(
                    f"models.{spec.name}.backend: unknown backend `{spec.backend}` "
                    f"(registered backends: {known})"
                )
            self._handles[spec.name] = ModelHandle(spec, factory(spec, data_dir))

    def __iter__(self) -> Iterator[ModelHandle]:
        return iter(self._handles.values())

    def __len__(self) -> int:
        return len(self._handles)

    def handle(self, name: str) -> ModelHandle:
        try:
            return self._handles[name]
        except KeyError:
            raise ModelNotFound(name, list(self._handles)) from None

    def resolve(
        self,
        requested: str | None,
        capability: Capability,
        *,
        fallback: bool = False,
        default: str | None = None,
    ) -> str:
        """The name of the model that serves a request naming `requested`.

        No name: `default`, else the first model that has `capability`. A served name:
        that model. An unknown name: with `fallback`, the default (llama-server ignores the
        name clients send); otherwise ModelNotFound, listing the served models.
        """
        if requested and requested in self._handles:
            return requested
        if requested and not fallback:
            raise ModelNotFound(requested, list(self._handles))
        return default or self.first_with(capability)

    def first_with(self, capability: Capability) -> str:
        """The name of the first configured model whose backend has `capability`."""
        for handle in self._handles.values():
            if capability in handle.backend.capabilities:
                return handle.spec.name
        raise Unsupported(f"No configured model can {capability.value}.")

    def get(self, name: str) -> Backend:
        """The backend of a ready model; a clear error when it is unknown or not ready."""
        handle = self.handle(name)
        if handle.state is ModelState.LOADING:
            raise ModelNotReady(f"Model `{name}` is still loading.", code="model_loading")
        if handle.state is ModelState.FAILED:
            raise BackendFailure(f"Model `{name}` failed to load: {handle.error}")
        return handle.backend

    @property
    def all_ready(self) -> bool:
        return all(h.state is ModelState.READY for h in self._handles.values())

    def start_loading(self) -> None:
        for handle in self._handles.values():
            self._tasks.append(
                asyncio.create_task(self._load(handle), name=f"load:{handle.spec.name}")
            )

    async def wait_ready(self) -> None:
        await asyncio.gather(*self._tasks)

    async def _load(self, handle: ModelHandle) -> None:
        started = time.perf_counter()
        try:
            await handle.backend.load()
        except Exception as exc:  # a broken model must not take the server down
            log.exception("model %s failed to load", handle.spec.name)
            handle.state, handle.error = ModelState.FAILED, f"{type(exc).__name__}: {exc}"
            return
        handle.load_seconds = time.perf_counter() - started
        handle.state = ModelState.READY
        log.info("model %s ready in %.2fs", handle.spec.name, handle.load_seconds)

    async def replace(
        self, specs: list[ModelSpec], factories: Mapping[str, BackendFactory], data_dir: Path
    ) -> None:
        """Serve `specs` instead of the current models, without stopping the server.

        The new list is validated first (a bad one changes nothing); then the old models
        are unloaded and the new ones load in the background (503 while loading).
        """
        fresh = ModelManager(specs, factories, data_dir)
        old = self._handles
        for task in self._tasks:
            task.cancel()
        self._handles, self._tasks = fresh._handles, []
        for handle in old.values():
            if handle.state is ModelState.READY:
                await handle.backend.unload()
        self.start_loading()

    async def unload_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        for handle in self._handles.values():
            if handle.state is ModelState.READY:
                await handle.backend.unload()
