"""Jobs as Ray tasks (`[jobs] runner = "ray"`).

`RaySupervisor` takes the place of the local worker processes: for each base model it
claims queued jobs from the job store (up to `[training] jobs_per_model` at a time) and
runs each as one Ray task, `run_job`, on whichever node of the cluster has `ray_cpus`
CPUs (and `ray_gpus` GPUs) free. The task builds the same `Worker` a local worker process
builds and runs the job with it, so every trainer (SFT, GRPO, fine-tunes, distillation)
runs unchanged: steps, logs, phases and costs go straight into the job store, the adapter
into the data directory, and a stop request reaches the job at its next step wherever it
runs.

The lease of a job is renewed both by its task and by this server while the task is
queued on the cluster. Ray ties a task to the process that submitted it: when this
server dies its tasks are killed and their leases run out, and another replica sharing
the job store takes the jobs over (`TrainingService._reap`). A task that dies on its own
(its node went away) fails its job, as a dead local worker does. Stopping the server
cancels its tasks; a resumable job stays `running` and the next start queues it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.engine.backend import ModelSpec
from gateway.errors import ConfigError
from gateway.jobs import Job, JobState
from gateway.settings import JobsSettings
from gateway.training.supervisor import Supervisor
from gateway.training.worker import POLL_SECONDS, Worker, WorkerConfig

log = logging.getLogger("gateway.training")


def import_ray() -> Any:
    """The `ray` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("[jobs] runner = \"ray\" needs Ray: pip install 'gateway[ray]'") from None
    return ray


def run_job(raw: bytes, job_id: str) -> str:
    """The body of a Ray task: run the claimed job `job_id` with a worker built from
    `raw` (a JSON `WorkerConfig`); returns the job's final state."""
    config = msgspec.json.decode(raw, type=WorkerConfig)
    sys.path.extend(entry for entry in config.path if entry not in sys.path)
    logging.basicConfig(level=config.log_level.upper())
    worker = Worker(config, events=False)
    stop = threading.Event()
    beating = threading.Thread(target=worker.beat, args=(stop,), daemon=True)
    beating.start()
    try:
        job = worker.jobs.get(job_id, with_data=True)
        if job is None or job.state != JobState.RUNNING or job.worker != config.worker:
            return "gone"  # cancelled or taken over while the task waited for the cluster
        worker.run_job(job)
        final = worker.jobs.get(job_id)
        return final.state.value if final else "gone"
    finally:
        stop.set()
        worker.jobs.close()


def _in_daemon_thread(call: Callable[[], None]) -> asyncio.Future[None]:
    """`call()` in a daemon thread; a future of the running loop for its outcome."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            call()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed while `call` ran
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="ray-connect", daemon=True).start()
    return done


@dataclass
class RayTask:
    """One job running (or waiting for resources) on the cluster."""

    worker: str
    model: str
    job: str
    ref: Any
    started: float = field(default_factory=time.time)
    watcher: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        return {"runner": "ray", "model": self.model, "job": self.job, "worker": self.worker}


class RaySupervisor(Supervisor):
    """Claims queued jobs and runs each as a Ray task (see the module's docstring)."""

    def __init__(self, *, runner: JobsSettings, kinds: frozenset[str], **options: Any):
        super().__init__(**options)
        self.runner = runner
        self.kinds = kinds
        self.ray = import_ray()
        self.tasks: dict[str, RayTask] = {}
        self._remote: Any = None
        self._connect = asyncio.Lock()
        self._beating: asyncio.Task[None] | None = None
        self._polling: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._unreachable: str | None = None

    def describe(self) -> list[dict[str, Any]]:
        return [task.describe() for task in self.tasks.values()]

    async def _connected(self) -> Any:
        """The remote function, connecting to the cluster on first use. `ray.init` may
        wait for an unreachable cluster for ever: it runs in a daemon thread of its own
        (which cannot hold up the process's exit), waited for `ray_connect_timeout`
        seconds at a time; a later call waits for the same attempt again."""
        async with self._connect:
            if self._remote is None:
                if self._connecting is None:
                    self._connecting = _in_daemon_thread(self._init)
                try:
                    await asyncio.wait_for(
                        asyncio.shield(self._connecting), self.runner.ray_connect_timeout
                    )
                except TimeoutError:
                    raise ConnectionError(
                        f"no answer from the Ray cluster ({self.runner.ray_address or 'local'})"
                        f" within {self.runner.ray_connect_timeout:g} s"
                    ) from None
                except Exception:
                    self._connecting = None  # it failed: the next call tries again
                    raise
                self._remote = self.ray.remote(run_job).options(
                    num_cpus=self.runner.ray_cpus,
                    num_gpus=self.runner.ray_gpus,
                    max_retries=0,
                    name="gateway-job",
                )
                self._beating = asyncio.create_task(self._beat(), name="ray-job-leases")
            return self._remote

    def _init(self) -> None:
        if self.ray.is_initialized():
            return
        self.ray.init(
            address=self.runner.ray_address,
            namespace="gateway",
            include_dashboard=False,
            configure_logging=False,
        )
        log.info("jobs run on the Ray cluster: %s", self.ray.cluster_resources())

    async def ensure(self, spec: ModelSpec, *, preload: bool = False) -> None:
        """Claim queued jobs of `spec`'s model while it runs fewer than `jobs_per_model`,
        each into a new task. (`preload` has nothing to preload: a task loads its model.)"""
        if self.stopping or self.settings.jobs_per_model == 0 or preload:
            return
        self.specs[spec.name] = spec
        if self._polling is None:
            self._polling = asyncio.create_task(self._poll(), name="ray-job-queue")
        threads = max(1, int(self.runner.ray_cpus))
        while sum(t.model == spec.name for t in self.tasks.values()) < (
            self.settings.jobs_per_model
        ):
            queued = await asyncio.to_thread(
                self.jobs.find, states=frozenset({JobState.QUEUED}), model=spec.name
            )
            if not queued:
                return
            try:
                remote = await self._connected()
            except Exception as exc:
                await self._waiting(queued, f"{type(exc).__name__}: {exc}")
                return
            config = self.config(spec, preload=False, threads=threads, prefix="ray:")
            job = await asyncio.to_thread(self.jobs.claim, spec.name, config.worker, self.kinds)
            if job is None:
                return
            ref = remote.remote(msgspec.json.encode(config), job.id)
            task = RayTask(worker=config.worker, model=spec.name, job=job.id, ref=ref)
            self.tasks[config.worker] = task
            task.watcher = asyncio.create_task(self._watch_task(task), name=f"ray:{job.id}")
            await asyncio.to_thread(
                self.jobs.log, job.id, f"submitted to the Ray cluster as worker {config.worker}"
            )
            log.info("job %s runs on the Ray cluster (worker %s)", job.id, config.worker)

    async def _waiting(self, queued: list[Job], reason: str) -> None:
        """The cluster cannot be reached: the jobs stay queued (the next look tries again),
        and say why in their log, once per new reason."""
        if reason == self._unreachable:
            return
        self._unreachable = reason
        log.error("the Ray cluster cannot be reached (%s); jobs stay queued", reason)
        for job in queued:
            message = f"waiting for the Ray cluster, which cannot be reached: {reason}"
            await asyncio.to_thread(self.jobs.log, job.id, message)

    async def _watch_task(self, task: RayTask) -> None:
        try:
            state = await task.ref
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.stopping:
                return
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            message = (
                f"The job's Ray task ended unexpectedly ({reason.strip()}) at step {{step}} of "
                "{total}; no adapter was written."
            )
            failed = await asyncio.to_thread(
                self.jobs.fail_running, message, worker=task.worker, webhook=True
            )
            log.error("Ray task of job %s failed: %s", task.job, reason)
            for job in failed:
                await self._finished(job)
        else:
            log.info("job %s ended on the Ray cluster: %s", task.job, state)
            ended = await asyncio.to_thread(self.jobs.get, task.job)
            if ended is not None and ended.state != JobState.RUNNING:
                await self._finished(ended)
        finally:
            if not self.stopping:
                self.tasks.pop(task.worker, None)
        spec = self.specs.get(task.model)
        if spec is not None:
            await self.ensure(spec)

    async def _poll(self) -> None:
        """Look for queued jobs every `POLL_SECONDS` (jobs another replica queued, or
        took back from a replica that died)."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            for spec in list(self.specs.values()):
                try:
                    await self.ensure(spec)
                except Exception:
                    log.warning("looking for queued jobs of %s failed", spec.name, exc_info=True)

    async def _beat(self) -> None:
        """Renew the leases of the jobs this server submitted (a task may wait for free
        resources for longer than a lease before it starts renewing its own)."""
        every = min(5.0, self.settings.lease_seconds / 4)
        while True:
            await asyncio.sleep(every)
            for worker in list(self.tasks):
                try:
                    await asyncio.to_thread(self.jobs.heartbeat, worker)
                except Exception:
                    log.warning("renewing the lease of %s failed", worker, exc_info=True)

    async def stop(self) -> None:
        """Cancel the tasks (their jobs fail, or stay `running` to resume if they can),
        and leave the cluster."""
        self.stopping = True
        for loop in (self._beating, self._polling):
            if loop is not None:
                loop.cancel()
        tasks = list(self.tasks.values())
        for task in tasks:
            with contextlib.suppress(Exception):
                self.ray.cancel(task.ref, force=True)
        for task in tasks:
            if task.watcher is not None:
                task.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task.watcher
            await asyncio.to_thread(self._interrupted, task.worker)
        self.tasks.clear()
        if self._remote is not None:
            await asyncio.to_thread(self.ray.shutdown)
