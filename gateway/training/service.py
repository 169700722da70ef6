"""`TrainingService`: submitting, reading, cancelling and stopping training jobs.

Route families (Kiln's `/v1/train/*`, NPU-STACK's `/api/finetune/*`) and the CLI go
through it; it keeps the jobs in the job store and the workers running
(`gateway.training.supervisor`). When a job completes with `auto_load` (the default), its
adapter becomes the server default of its model; serving picks the new version up with the
next request, without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import ModuleType
from typing import TYPE_CHECKING, Any

import msgspec
from gateway_schemas.canonical import AdapterRef

from gateway.adapters.models import adapter_model
from gateway.adapters.names import check_name
from gateway.engine.backend import Capability
from gateway.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gateway.jobs import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Job,
    JobState,
    JobStore,
    LogLine,
    NewJob,
    QueueFull,
    StepMetrics,
)
from gateway.jobs.open import open_job_store
from gateway.training.registry import collect_trainers
from gateway.training.supervisor import INTERRUPTED, Supervisor
from gateway.training.trainer import Trainer
from gateway.training.webhook import deliver

if TYPE_CHECKING:
    from gateway.gateway import Gateway

log = logging.getLogger("gateway.training")

MAX_RESTARTS = 3
"""Restarts a resumable job is queued again after; the next one fails it."""


class TrainingService:
    def __init__(self, gateway: Gateway, jobs: JobStore | None = None):
        self.gateway = gateway
        self.settings = gateway.settings.training
        data_dir = gateway.settings.data_path()
        database = gateway.settings.database()
        self.jobs: JobStore = jobs or open_job_store(database)
        self.trainers: dict[str, Trainer] = collect_trainers(gateway.pm)
        options: dict[str, Any] = {}
        supervisor: type[Supervisor] = Supervisor
        if gateway.settings.jobs.runner == "ray":
            from gateway.training.ray_runner import RaySupervisor

            supervisor = RaySupervisor
            options = {"runner": gateway.settings.jobs, "kinds": frozenset(self.trainers)}
        self.supervisor = supervisor(
            **options,
            settings=self.settings,
            jobs=self.jobs,
            data_dir=data_dir,
            database=database,
            plugins=[
                plugin.__name__
                for _, plugin in gateway.pm.list_name_plugin()
                if isinstance(plugin, ModuleType)
            ],
            log_level=gateway.settings.server.log_level,
            on_finished=self._finished,
            server_settings=msgspec.to_builtins(gateway.settings),
            served=lambda: [handle.spec for handle in gateway.models],
            resumable=frozenset(name for name, t in self.trainers.items() if t.resumable),
        )
        self._tasks: set[asyncio.Task[Any]] = set()

    # Life cycle.

    async def start(self) -> None:
        """Fail what a previous run left running, resend pending webhooks, and start
        workers for queued jobs (and, with `preload`, for every trainable model once it
        is loaded)."""
        if not self.trainers:
            return
        await self._recover()
        if self.jobs.shared:
            self._spawn(self._reap())
        pending = await asyncio.to_thread(self.jobs.find, states=TERMINAL_STATES)
        for job in pending:
            if job.webhook == "pending":
                self._spawn(self._webhook(job))
        self._spawn(self._start_workers())

    async def _recover(self) -> list[Job]:
        """Queue again or fail the running jobs nobody runs any more.

        A server that owns its store alone, at its start: every running job; those that
        can resume are queued again, the others fail (their client can submit them
        again). With a shared store: the jobs whose lease ran out (their worker or its
        replica died while the other replicas live on); every one is queued again, to
        resume or to start over, so that another replica takes it over."""
        stale = self.settings.lease_seconds if self.jobs.shared else None
        resumable = self.supervisor.resumable
        resumed = await asyncio.to_thread(
            self.jobs.requeue_running,
            frozenset(self.trainers) if stale else resumable,
            max_restarts=MAX_RESTARTS,
            stale_after=stale,
        )
        cause = "its worker's lease ran out" if stale else "interrupted by a server restart"
        for job in resumed:
            again = "to resume" if job.kind in resumable else "to start over"
            log.warning("job %s: %s: queued again %s", job.id, cause, again)
            await asyncio.to_thread(self.jobs.log, job.id, f"{cause}: queued again {again}")
        interrupted = await asyncio.to_thread(
            self.jobs.fail_running, INTERRUPTED, webhook=True, stale_after=stale
        )
        for job in interrupted:
            log.warning("training job %s was interrupted: failed", job.id)
        served = {handle.spec.name: handle.spec for handle in self.gateway.models}
        for model in {job.model for job in resumed} & set(served):
            await self.supervisor.ensure(served[model])
        return interrupted

    async def _reap(self) -> None:
        """With a shared store: look for abandoned jobs every third of a lease."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                for job in await self._recover():
                    await self._finished(job)  # its webhook, its trace
            except Exception:
                log.exception("looking for abandoned jobs failed")

    async def _start_workers(self) -> None:
        trainable = [
            handle.spec
            for handle in self.gateway.models
            if Capability.ADAPTERS in handle.backend.capabilities
        ]
        for spec in trainable:
            await self.supervisor.ensure(spec)  # jobs the last run left queued
        if self.settings.preload and trainable:
            # Load the serving models first: both at once would slow both on a small CPU.
            await self.gateway.models.wait_ready()
            for spec in trainable:
                await self.supervisor.ensure(spec, preload=True)

    async def close(self) -> None:
        await self.supervisor.stop()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def describe(self) -> dict[str, Any]:
        """What /health shows: running jobs with their progress, the queue's length and
        the worker processes."""
        active = await asyncio.to_thread(self.jobs.find, states=ACTIVE_STATES)
        return {
            "active_jobs": [
                {"job_id": job.id, "job_type": job.kind, "progress": round(job.progress, 4)}
                for job in active
                if job.state == JobState.RUNNING
            ],
            "queued": sum(job.state == JobState.QUEUED for job in active),
            "workers": self.supervisor.describe(),
        }

    # Submitting.

    async def submit(
        self,
        kind: str,
        data: Any,
        config: dict[str, Any],
        *,
        model: str | None = None,
        output_name: str | None = None,
    ) -> tuple[Job, int]:
        """Queue a job; the job and its 1-based position among its model's queued jobs."""
        trainer = self.trainers.get(kind)
        if trainer is None:
            raise InvalidRequest(
                f"There is no `{kind}` trainer. Trainers: "
                f"{', '.join(f'`{n}`' for n in sorted(self.trainers)) or 'none installed'}.",
                code="unknown_trainer",
            )
        name = adapter_model(
            self.gateway,
            model,
            refusal="cannot be trained: its backend does not serve LoRA adapters",
            code="model_not_trainable",
        )
        trainer.check(data, config)
        handle = self.gateway.models.handle(name)
        store = handle.backend.adapters
        base = config.get("base_adapter")
        if base:
            await asyncio.to_thread(store.path, base, "base_adapter")
        job_id = str(uuid.uuid4())
        output = check_name(output_name or f"{kind}-{job_id[:8]}", "output_name")
        new = NewJob(id=job_id, kind=kind, model=name, output_name=output, config=config, data=data)
        try:
            job = await asyncio.to_thread(
                self.jobs.submit, new, max_queued=self.settings.max_queued_jobs
            )
        except QueueFull:
            raise Unavailable(
                f"The training queue is full ({self.settings.max_queued_jobs} jobs); "
                "retry when a job has finished.",
                code="training_queue_full",
            ) from None
        position = await asyncio.to_thread(self.jobs.position, job.id) or 1
        await self.supervisor.ensure(handle.spec)
        return job, position

    # Reading.

    async def get(self, job_id: str) -> Job:
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job is None:
            raise NotFound(
                f"There is no training job `{job_id}`.",
                param="job_id",
                code="training_job_not_found",
            )
        return job

    async def find(
        self,
        *,
        states: frozenset[JobState] | None = None,
        kinds: frozenset[str] | None = None,
    ) -> list[Job]:
        return await asyncio.to_thread(self.jobs.find, states=states, kinds=kinds)

    async def position(self, job_id: str) -> int | None:
        return await asyncio.to_thread(self.jobs.position, job_id)

    async def metrics(self, job_id: str, limit: int | None = None) -> list[StepMetrics]:
        return await asyncio.to_thread(self.jobs.metrics, job_id, limit)

    async def logs(self, job_id: str, limit: int | None = None) -> list[LogLine]:
        return await asyncio.to_thread(self.jobs.logs, job_id, limit)

    # Cancelling and stopping.

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job; 409 `training_job_not_cancellable` for any other."""
        cancelled = await asyncio.to_thread(self.jobs.cancel_queued, job_id, webhook=True)
        if cancelled is None:
            job = await self.get(job_id)
            raise Conflict(
                f"Training job `{job_id}` is {job.state.value}; only queued jobs can be cancelled.",
                param="job_id",
                code="training_job_not_cancellable",
            )
        await self._finished(cancelled)
        return cancelled

    async def stop_job(self, job_id: str) -> Job:
        """Stop a job: a queued one is cancelled, a running one stops at its next step
        (it ends `cancelled`); a finished one is returned unchanged."""
        job = await self.get(job_id)
        if job.state == JobState.QUEUED:
            try:
                return await self.cancel(job_id)
            except Conflict:
                job = await self.get(job_id)
        if job.state == JobState.RUNNING:
            stopping = await asyncio.to_thread(self.jobs.request_stop, job_id)
            return stopping or await self.get(job_id)
        return job

    # A job ended.

    async def _finished(self, job: Job) -> None:
        self.gateway.tracing.job(job)
        served = {handle.spec.name for handle in self.gateway.models}
        if job.state == JobState.COMPLETED and job.model in served:
            # A new version of an adapter the engine holds: the next request loads it.
            self.gateway.models.handle(job.model).backend.adapters_changed(job.output_name)
            if job.config.get("auto_load", True):
                await self._auto_load(job)
        if job.webhook == "pending":
            self._spawn(self._webhook(job))

    async def _auto_load(self, job: Job) -> None:
        backend = self.gateway.models.handle(job.model).backend
        await asyncio.to_thread(
            backend.adapters.set_default, [AdapterRef(name=job.output_name, scale=1.0)]
        )
        log.info("job %s: adapter %s is the default of %s", job.id, job.output_name, job.model)

    async def _webhook(self, job: Job) -> None:
        if not self.settings.webhook_url:
            if job.webhook == "pending":
                await asyncio.to_thread(self.jobs.set_webhook, job.id, "skipped")
            return
        sent = await deliver(self.settings, job)
        await asyncio.to_thread(self.jobs.set_webhook, job.id, "sent" if sent else "failed")
