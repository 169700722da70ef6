"""The model manager: registered models, which of them are loaded, and the rules that
load and unload them.

A registered model (`[[models]]`, `register_models` hooks, `add` at run time) has a
handle whether or not it is loaded. `load = "startup"` models load when the server
starts; `on_demand` ones when a request names them (`lease`) or an operator asks
(`load`). Loads run one at a time, so that each one's memory can be measured (resident
memory before and after) and the next one's room judged on figures, not hopes.

Room: `[model_manager] max_loaded` models at most, and a memory budget (the configured
one, else what the machine has available). A load that does not fit evicts the least
recently used loaded model that is not pinned and has no load of its own under way,
then the next, until it fits; when nothing more can go, it is refused (409) before
anything is loaded: never an out-of-memory kill.

Requests hold a lease on their model (`lease`), counted per model. Unloading marks the
model `unloading` (new requests wait for the unload, then load it again), waits for the
leases to end (`abort` or `[model_manager] unload_timeout` cancels them), then unloads:
no request is ever served by a half-unloaded model. Each change of state is published to
subscribers (`events`, llama-server's `GET /models/sse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.engine.backend import Backend, BackendFactory, Capability, ModelSpec
from gateway.engine.memory import HostMemory, MemoryPool
from gateway.errors import (
    BackendFailure,
    ConfigError,
    Conflict,
    ModelNotFound,
    ModelNotReady,
    Unsupported,
)

log = logging.getLogger("gateway.models")

IDLE_CHECK_SECONDS = 1.0
"""How often idle models are looked for (only when some model has an `idle_timeout`)."""


class ModelState(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


ROUTER_STATUS = {
    ModelState.UNLOADED: "unloaded",
    ModelState.LOADING: "loading",
    ModelState.READY: "loaded",
    ModelState.UNLOADING: "unloading",
    ModelState.FAILED: "unloaded",
}
"""Each state as llama-server's router names it (`status.value`)."""


@dataclass(frozen=True)
class Limits:
    """`[model_manager]`'s rules (see `gateway.settings.ModelManagerSettings`)."""

    max_loaded: int = 0
    memory_budget: int | None = None
    vram_budget: int | None = None
    load_timeout: float = 600.0
    unload_timeout: float = 30.0

    def budget(self, pool: MemoryPool) -> int | None:
        """The configured budget of `pool` (None: what it has available)."""
        return self.vram_budget if pool.accelerator else self.memory_budget


@dataclass
class ModelHandle:
    """One registered model: its backend (a fresh one per load) and its record."""

    spec: ModelSpec
    factory: BackendFactory
    data_dir: Path
    backend: Backend
    state: ModelState = ModelState.UNLOADED
    error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    load_seconds: float | None = None
    loaded_at: float | None = None
    """`time.time()` of the current load's end (uptime)."""
    last_used: float = 0.0
    """`time.monotonic()` of the last lease's end (or of the load): LRU order, idleness."""
    memory: int | None = None
    """Memory the last load added to its pool, in bytes (measured)."""
    freed: int | None = None
    """Memory the last unload gave back to its pool, in bytes (measured)."""
    pool: MemoryPool = field(default_factory=HostMemory)
    """Where the model's memory lives (the backend's `memory_pool()`)."""
    served: int = 0
    loads: int = 0
    evictions: int = 0
    in_flight: int = 0
    leases: set[asyncio.Task[Any]] = field(default_factory=set)
    """Tasks serving requests under a lease, which an aborting unload cancels."""
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    busy: asyncio.Task[None] | None = None
    """The load or unload under way, which other callers wait on."""

    @property
    def name(self) -> str:
        return self.spec.name

    estimated: int | None = None
    """What the backend estimated before the first load (`prepare_estimate`)."""

    def estimate(self) -> int:
        """Bytes this model is expected to take: its last measured load, else what the
        backend estimated, else 0 (unknown)."""
        if self.memory is not None:
            return self.memory
        return self.estimated or 0

    async def prepare_estimate(self) -> None:
        """Ask the backend once for its memory pool and its estimate (it may read file
        headers or ask a driver: a thread)."""
        if self.estimated is None:
            self.pool, self.estimated = await asyncio.to_thread(self._ask_backend)

    def _ask_backend(self) -> tuple[MemoryPool, int]:
        return self.backend.memory_pool(), self.backend.memory_estimate() or 0

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.spec.name,
            "backend": self.spec.backend,
            "state": self.state.value,
            "load": self.spec.load,
            "pinned": self.spec.pin,
        }
        if self.load_seconds is not None:
            info["load_seconds"] = round(self.load_seconds, 3)
        if self.error:
            info["error"] = self.error
        if self.state is ModelState.READY:
            info.update(self.backend.health())
        return info

    def status(self) -> dict[str, Any]:
        """NPU-STACK's `GET /v1/models/status` entry."""
        uptime = time.time() - self.loaded_at if self.loaded_at else None
        return {
            "name": self.spec.name,
            "state": self.state.value,
            "backend": self.spec.backend,
            "source": self.spec.source,
            "pinned": self.spec.pin,
            "load": self.spec.load,
            "idle_timeout": self.spec.idle_timeout,
            "uptime_seconds": round(uptime, 1) if uptime is not None else None,
            "load_seconds": round(self.load_seconds, 3) if self.load_seconds else None,
            "memory_bytes": self.memory if self.state is ModelState.READY else None,
            "memory_pool": self.pool.name,
            "estimated_bytes": self.estimated,
            "requests_served": self.served,
            "requests_in_flight": self.in_flight,
            "loads": self.loads,
            "evictions": self.evictions,
            "error": self.error,
        }

    def router_status(self) -> dict[str, Any]:
        """llama-server's router `status` object."""
        status: dict[str, Any] = {"value": ROUTER_STATUS[self.state]}
        if self.state is ModelState.FAILED:
            status["failed"] = True
        return status


class ModelManager:
    """The registered models, their loads, unloads, leases and events."""

    def __init__(
        self,
        specs: list[ModelSpec],
        factories: Mapping[str, BackendFactory],
        data_dir: Path,
        limits: Limits | None = None,
    ):
        self._factories = factories
        self._data_dir = data_dir
        self.limits = limits or Limits()
        self._handles: dict[str, ModelHandle] = {}
        self._room = asyncio.Lock()
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._startup: list[asyncio.Task[None]] = []
        self.on_change: list[Any] = []
        """Callables `(event: str, handle)` told of `load`, `unload` and `evict`."""
        for spec in specs:
            self._register(spec)

    def _register(self, spec: ModelSpec) -> ModelHandle:
        if spec.name in self._handles:
            raise ConfigError(f"models: the name `{spec.name}` is declared twice")
        factory = self._factories.get(spec.backend)
        if factory is None:
            known = ", ".join(sorted(self._factories)) or "none"
            raise ConfigError(
                f"models.{spec.name}.backend: unknown backend `{spec.backend}` "
                f"(registered backends: {known})"
            )
        handle = ModelHandle(spec, factory, self._data_dir, factory(spec, self._data_dir))
        handle.drained.set()
        self._handles[spec.name] = handle
        return handle

    def __iter__(self) -> Iterator[ModelHandle]:
        return iter(list(self._handles.values()))

    def __len__(self) -> int:
        return len(self._handles)

    def __contains__(self, name: object) -> bool:
        return name in self._handles

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

        No name: `default`, else the first model that has `capability`. A registered
        name: that model. An unknown name: with `fallback`, the default (llama-server
        ignores the name clients send); otherwise ModelNotFound, listing the models.
        """
        if requested and requested in self._handles:
            return requested
        if requested and not fallback:
            raise ModelNotFound(requested, list(self._handles))
        return default or self.first_with(capability)

    def first_with(self, capability: Capability) -> str:
        """The name of the first registered model whose backend has `capability`."""
        for handle in self._handles.values():
            if capability in handle.backend.capabilities:
                return handle.spec.name
        raise Unsupported(f"No configured model can {capability.value}.")

    def get(self, name: str) -> Backend:
        """The backend of a loaded model; a clear error when it is unknown or not loaded."""
        handle = self.handle(name)
        if handle.state is ModelState.READY:
            return handle.backend
        if handle.state is ModelState.FAILED:
            raise BackendFailure(f"Model `{name}` failed to load: {handle.error}")
        if handle.state is ModelState.LOADING:
            raise ModelNotReady(f"Model `{name}` is still loading.", code="model_loading")
        raise ModelNotReady(
            f"Model `{name}` is not loaded: name it in a request to load it, or "
            "`POST /v1/models/load` with its name.",
            code="model_not_loaded",
        )

    @property
    def all_ready(self) -> bool:
        """No startup load is still under way (a failed one shows as `failed`)."""
        return all(task.done() for task in self._startup)

    # -- loading -------------------------------------------------------------------

    def start_loading(self) -> None:
        """Load the `startup` models in the background (one after the other) and watch
        for idle ones."""
        for handle in self._handles.values():
            if handle.spec.load == "startup":
                self._startup.append(self._start_load(handle))
        self._watch_idle()

    def _start_load(self, handle: ModelHandle) -> asyncio.Task[None]:
        """The load of `handle` under way, started now if none is."""
        if handle.busy is None:
            handle.busy = asyncio.ensure_future(self._load(handle))
            handle.busy.add_done_callback(functools.partial(_clear_busy, handle))
        return handle.busy

    async def wait_ready(self) -> None:
        await asyncio.gather(*self._startup, return_exceptions=True)

    async def load(self, name: str, *, timeout: float | None = None) -> ModelHandle:
        """Load `name` unless it is loaded (sharing a load under way; after an unload
        under way), evicting others to make room. Raises what the load raised: Conflict
        when it cannot fit, BackendFailure when the backend failed."""
        handle = self.handle(name)
        deadline = time.monotonic() + (timeout or self.limits.load_timeout)
        while handle.state is not ModelState.READY:
            task = self._start_load(handle)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelNotReady(
                    f"Model `{name}` did not load within {timeout or self.limits.load_timeout:g} "
                    "seconds.",
                    code="model_loading",
                )
            try:
                await asyncio.wait_for(asyncio.shield(task), left)
            except TimeoutError:
                continue
            if handle.state is ModelState.FAILED:
                raise BackendFailure(f"Model `{name}` failed to load: {handle.error}")
        return handle

    async def _load(self, handle: ModelHandle) -> None:
        async with self._room:
            if handle.state is ModelState.READY:
                return
            await self._make_room(handle)
            handle.state, handle.error = ModelState.LOADING, None
            handle.backend = handle.factory(handle.spec, handle.data_dir)
            self._publish(handle)
            before = handle.pool.used()
            started = time.perf_counter()
            try:
                await handle.backend.load()
            except Exception as exc:  # a broken model must not take the server down
                log.exception("model %s failed to load", handle.name)
                handle.state, handle.error = ModelState.FAILED, f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    await handle.backend.unload()
                self._publish(handle)
                return
            handle.load_seconds = time.perf_counter() - started
            handle.memory = max(handle.pool.used() - before, 0)
            handle.loaded_at, handle.last_used = time.time(), time.monotonic()
            handle.loads += 1
            handle.state = ModelState.READY
            log.info(
                "model %s ready in %.2fs (+%d MiB %s)",
                handle.name,
                handle.load_seconds,
                handle.memory >> 20,
                handle.pool.name,
            )
            self._publish(handle)
            self._tell("load", handle)

    async def _make_room(self, handle: ModelHandle) -> None:
        """Evict least recently used unpinned models until `handle` fits; Conflict when it
        cannot (checked before anything is evicted)."""
        await handle.prepare_estimate()
        needed = handle.estimate()
        loaded = [h for h in self._handles.values() if h.state is ModelState.READY]
        candidates = sorted(
            (h for h in loaded if not h.spec.pin and h is not handle), key=lambda h: h.last_used
        )
        victims: list[ModelHandle] = []
        while not self._fits(handle, needed, loaded, victims):
            # over `max_loaded`, any model may give way; short of memory, only one that
            # frees some in the pool the new model needs
            counting = self._over_count(loaded, victims)
            victim = next(
                (
                    h
                    for h in candidates
                    if h not in victims and (counting or h.pool.name == handle.pool.name)
                ),
                None,
            )
            if victim is None:
                raise Conflict(self._no_room(handle, needed, loaded), code="model_does_not_fit")
            victims.append(victim)
        for victim in victims:
            log.info("evicting model %s to make room for %s", victim.name, handle.name)
            victim.evictions += 1
            await self._unload(victim, abort=False)
            self._tell("evict", victim)

    def _fits(
        self,
        handle: ModelHandle,
        needed: int,
        loaded: list[ModelHandle],
        victims: list[ModelHandle],
    ) -> bool:
        if self._over_count(loaded, victims):
            return False
        pool = handle.pool
        budget = self.limits.budget(pool)
        staying = [h for h in loaded if h.pool.name == pool.name and h not in victims]
        if budget is not None:
            return sum(h.estimate() for h in staying) + needed <= budget
        going = sum(h.estimate() for h in victims if h.pool.name == pool.name)
        return needed <= pool.available() + going

    def _over_count(self, loaded: list[ModelHandle], victims: list[ModelHandle]) -> bool:
        limit = self.limits.max_loaded
        return bool(limit) and len(loaded) - len(victims) + 1 > limit

    def _no_room(self, handle: ModelHandle, needed: int, loaded: list[ModelHandle]) -> str:
        pinned = [h.name for h in loaded if h.spec.pin]
        held = f" ({', '.join(f'`{n}`' for n in pinned)} pinned)" if pinned else ""
        if self.limits.max_loaded and len(pinned) >= self.limits.max_loaded:
            return (
                f"Model `{handle.name}` cannot be loaded: `max_loaded` is "
                f"{self.limits.max_loaded} and every loaded model is pinned{held}."
            )
        pool, budget = handle.pool, self.limits.budget(handle.pool)
        kind = "VRAM" if pool.accelerator else "memory"
        room = (
            f"the {kind} budget of {budget >> 20} MiB"
            if budget is not None
            else f"the {pool.available() >> 20} MiB {pool.name} has available"
        )
        return (
            f"Model `{handle.name}` needs about {needed >> 20} MiB, more than {room} "
            f"leaves after unloading every model that is not pinned{held}."
        )

    # -- leases --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str, *, autoload: bool = True) -> AsyncIterator[ModelHandle]:
        """Hold `name` loaded while a request uses it (loading it first with `autoload`;
        otherwise a model that is not loaded is ModelNotReady). A caller whose work an
        aborting unload may cancel adds its task to `handle.leases` (and removes it)."""
        handle = self.handle(name)
        while handle.state is not ModelState.READY:
            if not autoload and handle.busy is None:
                self.get(name)  # raises the state's error
            await self.load(name)
        handle.in_flight += 1
        handle.drained.clear()
        try:
            yield handle
        finally:
            handle.in_flight -= 1
            handle.served += 1
            handle.last_used = time.monotonic()
            if handle.in_flight == 0:
                handle.drained.set()

    # -- unloading -----------------------------------------------------------------

    async def unload(self, name: str, *, abort: bool = False) -> ModelHandle:
        """Unload `name` once its requests end (`abort`: cancel them now); a load under
        way finishes first. Returns the handle (`freed`: resident bytes given back)."""
        handle = self.handle(name)
        while handle.busy is not None:
            with contextlib.suppress(Exception):  # a failed load: nothing to unload
                await asyncio.shield(handle.busy)
        if handle.state is not ModelState.READY:
            return handle
        async with self._room:
            await self._unload(handle, abort=abort)
        self._tell("unload", handle)
        return handle

    async def _unload(self, handle: ModelHandle, *, abort: bool) -> None:
        if handle.state is not ModelState.READY:
            return
        handle.state = ModelState.UNLOADING
        unloading = asyncio.get_running_loop().create_future()
        handle.busy = asyncio.ensure_future(_wait_for(unloading))
        handle.busy.add_done_callback(functools.partial(_clear_busy, handle))
        self._publish(handle)
        try:
            if abort:
                _cancel(handle)
            try:
                await asyncio.wait_for(handle.drained.wait(), self.limits.unload_timeout)
            except TimeoutError:
                log.warning(
                    "model %s: %d requests still running after %gs: aborting them",
                    handle.name,
                    handle.in_flight,
                    self.limits.unload_timeout,
                )
                _cancel(handle)
                await handle.drained.wait()
            before = handle.pool.used()
            try:
                await handle.backend.unload()
            finally:
                handle.backend = handle.factory(handle.spec, handle.data_dir)
                await asyncio.to_thread(handle.pool.trim)
                handle.freed = max(before - handle.pool.used(), 0)
                handle.state, handle.loaded_at = ModelState.UNLOADED, None
                log.info(
                    "model %s unloaded (-%d MiB %s)",
                    handle.name,
                    handle.freed >> 20,
                    handle.pool.name,
                )
                self._publish(handle)
        finally:
            unloading.set_result(None)

    async def unload_all(self) -> None:
        for task in [*self._startup, *([self._watcher] if self._watcher else [])]:
            task.cancel()
        for handle in self._handles.values():
            if handle.busy is not None:
                handle.busy.cancel()
            if handle.state in (ModelState.READY, ModelState.UNLOADING):
                with contextlib.suppress(Exception):
                    await handle.backend.unload()
            handle.state = ModelState.UNLOADED

    # -- idle ----------------------------------------------------------------------

    def _watch_idle(self) -> None:
        if self._watcher is None and any(h.spec.idle_timeout for h in self._handles.values()):
            self._watcher = asyncio.ensure_future(self._unload_idle())

    async def _unload_idle(self) -> None:
        while True:
            await asyncio.sleep(IDLE_CHECK_SECONDS)
            now = time.monotonic()
            for handle in list(self._handles.values()):
                timeout = handle.spec.idle_timeout
                if (
                    timeout
                    and not handle.spec.pin
                    and handle.state is ModelState.READY
                    and handle.in_flight == 0
                    and now - handle.last_used >= timeout
                ):
                    log.info("model %s idle for %gs: unloading it", handle.name, timeout)
                    with contextlib.suppress(Exception):
                        await self.unload(handle.name)

    # -- registering at run time ---------------------------------------------------

    def add(self, spec: ModelSpec) -> ModelHandle:
        """Register `spec` now (Conflict when the name is taken); it loads on demand, or
        now when `spec.load` is `startup`."""
        if spec.name in self._handles:
            raise Conflict(f"A model named `{spec.name}` is already registered.", param="name")
        handle = self._register(spec)
        self._publish(handle)
        if spec.load == "startup":
            self._startup.append(self._start_load(handle))
        self._watch_idle()
        return handle

    async def replace(
        self, specs: list[ModelSpec], factories: Mapping[str, BackendFactory], data_dir: Path
    ) -> None:
        """Serve `specs` instead of the current models, without stopping the server.

        The new list is validated first (a bad one changes nothing); then the old models
        are unloaded and the new ones load in the background (503 while loading).
        """
        fresh = ModelManager(specs, factories, data_dir, self.limits)
        await self.unload_all()
        self._handles, self._startup, self._watcher = fresh._handles, [], None
        self._factories, self._data_dir = factories, data_dir
        self.start_loading()

    # -- events --------------------------------------------------------------------

    @contextlib.contextmanager
    def events(self) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of llama-server's router events (`{"model", "event", "data"}`) for as
        long as the caller listens."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1024)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    def _publish(self, handle: ModelHandle) -> None:
        data: dict[str, Any] = {"status": ROUTER_STATUS[handle.state]}
        if handle.state is ModelState.FAILED:
            data |= {"failed": True, "error": handle.error}
        if handle.state is ModelState.READY:
            data["info"] = {"load_seconds": handle.load_seconds, "memory_bytes": handle.memory}
        event = {"model": handle.name, "event": "model_status", "data": data}
        for queue in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):  # a listener that stopped reading
                queue.put_nowait(event)

    def _tell(self, event: str, handle: ModelHandle) -> None:
        for listener in self.on_change:
            listener(event, handle)


def _clear_busy(handle: ModelHandle, task: asyncio.Task[None]) -> None:
    if handle.busy is task:
        handle.busy = None
    if not task.cancelled():
        task.exception()  # retrieved: the callers that waited were told, or nobody waits


def _cancel(handle: ModelHandle) -> None:
    for task in list(handle.leases):
        task.cancel()


async def _wait_for(future: asyncio.Future[None]) -> None:
    await future
