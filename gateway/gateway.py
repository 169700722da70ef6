"""`Gateway`: the one object that holds settings, plugins, models and services.

It is built once per app and injected into route handlers with Litestar DI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import pluggy

from gateway.auth import Actor
from gateway.collect import collect_backends, collect_sections
from gateway.distillation.service import DistillationService
from gateway.engine import Capability, ModelManager, ModelSpec, ModelState
from gateway.engine.models import ROUTER_STATUS, Limits
from gateway.engine.stats import EngineStats
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.jobs.store import JobState
from gateway.metrics import Metrics, Snapshot
from gateway.plugins import make_plugin_manager
from gateway.recording import PromptRecorder
from gateway.services.generation import GenerationService
from gateway.settings import Settings
from gateway.stats import DecodeWindow, RecentRequests
from gateway.tracing import Tracing
from gateway.training.service import TrainingService
from gateway.utils import await_me_maybe

if TYPE_CHECKING:
    from litestar import Request

log = logging.getLogger("gateway")


class Gateway:
    def __init__(self, settings: Settings, pm: pluggy.PluginManager | None = None):
        self.settings = settings
        self.pm = pm or make_plugin_manager()
        self.hook = self.pm.hook
        self.metrics = Metrics(self._engine_stats)
        settings.check_sections(collect_sections(self.pm))
        self.backends = collect_backends(self.pm, settings)
        manager = settings.model_manager
        limits = Limits(
            max_loaded=manager.max_loaded,
            memory_budget=manager.budget_bytes,
            vram_budget=manager.vram_budget_bytes,
            load_timeout=manager.load_timeout,
            unload_timeout=manager.unload_timeout,
        )
        self.models = ModelManager(
            self._collect_models(), self.backends, settings.data_path(), limits
        )
        self.models.on_change.append(self.metrics.observe_model)
        self.tracing = Tracing.from_settings(settings.tracing)
        self.decode = DecodeWindow(settings.stats.decode_window)
        self.recent = RecentRequests(settings.stats.recent_requests)
        self.started = time.time()
        self.generation = GenerationService(self)
        self.training = TrainingService(self)
        self.recording = PromptRecorder(settings.recording, settings.database())
        self.distillation = DistillationService(self)

    def _engine_stats(self) -> dict[str, EngineStats]:
        """Each ready model's engine figures (`/metrics`)."""
        figures = {}
        for handle in self.models:
            stats = handle.backend.stats() if handle.state is ModelState.READY else None
            if stats is not None:
                figures[handle.spec.name] = stats
        return figures

    async def metrics_snapshot(self) -> Snapshot:
        """The model states and job figures `/metrics` shows (the job store is read in a
        thread)."""
        models = {handle.name: ROUTER_STATUS[handle.state] for handle in self.models}
        jobs = await asyncio.to_thread(self.training.jobs.find)
        counts: dict[tuple[str, str], int] = {}
        for job in jobs:
            key = (job.kind, str(job.state.value))
            counts[key] = counts.get(key, 0) + 1
        running = [
            (job.id, job.kind, job.model, round(job.progress, 4))
            for job in jobs
            if job.state == JobState.RUNNING
        ]
        return Snapshot(models=models, jobs=counts, progress=running)

    def _collect_models(self) -> list[ModelSpec]:
        specs = self.settings.served_models()

        def register(spec: ModelSpec) -> None:
            specs.append(spec)

        self.hook.register_models(register=register, gateway=self)
        return specs

    def model_for(
        self, requested: str | None, capability: Capability, default: str | None = None
    ) -> str:
        """The model serving a request that names `requested` (or none) and needs
        `capability`, under the `unknown_models` setting (see `ModelManager.resolve`);
        `default` replaces the first capable model as the default."""
        fallback = self.settings.unknown_models == "default"
        return self.models.resolve(requested, capability, fallback=fallback, default=default)

    async def startup(self) -> None:
        for result in self.hook.startup(gateway=self):
            await await_me_maybe(result)
        if not self.settings.api_keys:
            log.warning("no API keys are configured: every route is open to anyone who can connect")
        self.models.start_loading()
        await self.training.start()

    async def shutdown(self) -> None:
        await self.training.close()
        await self.models.unload_all()
        for result in self.hook.shutdown(gateway=self):
            await await_me_maybe(result)
        self.tracing.shutdown()

    async def authorize(self, request: Request[Any, Any, Any], scope: str) -> Actor | None:
        """The request's actor, if it may use a route needing `scope`; raises otherwise."""
        actor: Actor | None = None
        for result in self.hook.actor_from_request(gateway=self, request=request):
            actor = await await_me_maybe(result)
            if actor is not None:
                break
        votes = [
            await await_me_maybe(vote)
            for vote in self.hook.permission_allowed(gateway=self, actor=actor, scope=scope)
        ]
        if False not in votes and True in votes:
            return actor
        if actor is None:
            raise AuthenticationFailed(
                "Missing API key: send `Authorization: Bearer <key>` or `X-Api-Key: <key>`.",
                code="missing_api_key",
            )
        raise PermissionDenied(
            f"This API key does not have the `{scope}` scope.", code="insufficient_scope"
        )
