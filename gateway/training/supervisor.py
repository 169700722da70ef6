"""Starting, waking and watching the training worker processes.

Each base model with queued jobs gets up to `[training] jobs_per_model` workers (see
`gateway.training.worker`). The supervisor reads their events: when a job ends it hands
the result to `on_finished` (hot-loading, webhooks); when a worker dies it fails the job it
was running, saying so, and starts a fresh worker if jobs are still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway.engine.backend import ModelSpec
from gateway.jobs import Job, JobState, JobStore
from gateway.settings import TrainingSettings
from gateway.training.worker import WorkerConfig

log = logging.getLogger("gateway.training")

STOP_GRACE_SECONDS = 5.0
INTERRUPTED = (
    "The server stopped while this job was running (at step {step} of {total}); no adapter "
    "was written. Submit it again."
)
"""Why a job ends `failed` when the server stopped under it (cleanly, or at the next start
after a crash)."""
STDERR_LINES = 20
"""The last lines of a worker's stderr kept to explain a worker that could not start."""
RESTART_DELAYS = (0.0, 1.0, 5.0)
"""Waits before restarting a worker that died before it was ready; after that many tries,
the model's queued jobs fail with the worker's last words."""


@dataclass
class WorkerProcess:
    id: str
    model: str
    process: asyncio.subprocess.Process
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_LINES))
    job: str | None = None
    """The job it runs, as its events last said (None: idle)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe(self) -> dict[str, Any]:
        """What /health shows of it."""
        return {"pid": self.pid, "model": self.model, "ready": self.ready.is_set()}

    def wake(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.write(b"wake\n")


def worker_environment() -> dict[str, str]:
    """The server's environment, except that OpenMP threads wait passively: a worker
    shares the cores with serving, and threads that spin while they wait (what the torch
    backend sets up for serving) would take turns away from the other process's threads
    and slow both by orders of magnitude once there are more threads than cores."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("GOMP_SPINCOUNT", None)
    return env


def worker_threads() -> int:
    """A worker's torch threads when `[training] threads` is 0: half the cores (at least
    one), so that serving keeps the other half. On 2 cores one training thread trains as
    fast as two while requests are served, and slows serving no more (benchmarks/README)."""
    return max(1, (os.cpu_count() or 2) // 2)


def describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {-returncode} ({name})"
    return f"exit status {returncode}"


class Supervisor:
    def __init__(
        self,
        *,
        settings: TrainingSettings,
        jobs: JobStore,
        data_dir: Path,
        database: str,
        plugins: list[str],
        log_level: str,
        on_finished: Callable[[Job], Awaitable[None]],
        server_settings: dict[str, Any] | None = None,
        served: Callable[[], list[ModelSpec]] | None = None,
        resumable: frozenset[str] = frozenset(),
    ):
        self.settings = settings
        self.jobs = jobs
        self.data_dir = data_dir
        self.database = database
        self.plugins = plugins
        self.log_level = log_level
        self.on_finished = on_finished
        self.server_settings = server_settings or {}
        self.served = served or (lambda: [])
        self.resumable = resumable
        self.workers: dict[str, WorkerProcess] = {}
        self.specs: dict[str, ModelSpec] = {}
        self.failed_starts: dict[str, int] = {}
        self.stopping = False

    def describe(self) -> list[dict[str, Any]]:
        """Its workers, as /health shows them."""
        return [worker.describe() for worker in self.workers.values()]

    def workers_of(self, model: str) -> list[WorkerProcess]:
        return [w for w in self.workers.values() if w.model == model]

    async def ensure(self, spec: ModelSpec, *, preload: bool = False) -> None:
        """Wake the model's workers, starting more (up to `jobs_per_model`) while queued
        jobs outnumber the idle ones, or one when `preload`."""
        if self.stopping or self.settings.jobs_per_model == 0:
            return
        self.specs[spec.name] = spec
        running = self.workers_of(spec.name)
        if preload and not running:
            running.append(await self._start(spec, preload=True))
        if not preload:
            queued = await asyncio.to_thread(
                self.jobs.find, states=frozenset({JobState.QUEUED}), model=spec.name
            )
            idle = sum(worker.job is None for worker in running)
            while idle < len(queued) and len(running) < self.settings.jobs_per_model:
                running.append(await self._start(spec, preload=False))
                idle += 1
        for worker in running:
            worker.wake()

    def config(
        self, spec: ModelSpec, *, preload: bool, threads: int = 0, prefix: str = ""
    ) -> WorkerConfig:
        """What a new worker for `spec` is told; its id names this server's host and
        process (`prefix` first)."""
        return WorkerConfig(
            worker=f"{prefix}{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            model=spec,
            data_dir=str(self.data_dir),
            database=str(self.database),
            plugins=self.plugins,
            path=list(sys.path),
            threads=threads or self.settings.threads or worker_threads(),
            heartbeat=min(5.0, self.settings.lease_seconds / 4),
            preload=preload,
            log_level=self.log_level,
            settings=self.server_settings,
            models=self.served(),
        )

    async def _start(self, spec: ModelSpec, *, preload: bool) -> WorkerProcess:
        config = self.config(spec, preload=preload)
        worker_id = config.worker
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.training.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=worker_environment(),
        )
        assert process.stdin is not None
        process.stdin.write(msgspec.json.encode(config) + b"\n")
        worker = WorkerProcess(id=worker_id, model=spec.name, process=process)
        self.workers[worker_id] = worker
        worker.watcher = asyncio.create_task(self._watch(worker), name=f"worker:{worker_id}")
        log.info("training worker %s started for %s (pid %d)", worker_id, spec.name, process.pid)
        return worker

    async def _relay(self, worker: WorkerProcess) -> None:
        """Forward the worker's stderr to the server's log, keeping the last lines."""
        assert worker.process.stderr is not None
        async for raw in worker.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            worker.stderr.append(line)
            sys.stderr.write(line + "\n")

    async def _watch(self, worker: WorkerProcess) -> None:
        assert worker.process.stdout is not None
        relay = asyncio.create_task(self._relay(worker))
        async for line in worker.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "ready":
                worker.ready.set()
            elif event.get("event") == "started":
                worker.job = event["job"]
            elif event.get("event") == "finished":
                worker.job = None
                job = await asyncio.to_thread(self.jobs.get, event["job"])
                if job is not None:
                    await self._finished(job)
        returncode = await worker.process.wait()
        await relay
        self.workers.pop(worker.id, None)
        if self.stopping:
            return
        if not worker.ready.is_set():
            await self._failed_to_start(worker, returncode)
            return
        self.failed_starts.pop(worker.model, None)
        message = (
            f"The training worker stopped unexpectedly ({describe_exit(returncode)}) while "
            "running this job, at step {step} of {total}; no adapter was written."
        )
        failed = await asyncio.to_thread(
            self.jobs.fail_running, message, worker=worker.id, webhook=True
        )
        log.error(
            "training worker %s (pid %d) exited: %s; jobs failed: %s",
            worker.id,
            worker.pid,
            describe_exit(returncode),
            ", ".join(job.id for job in failed) or "none",
        )
        for job in failed:
            await self._finished(job)
        spec = self.specs.get(worker.model)
        if spec is not None:
            await self.ensure(spec)

    async def _failed_to_start(self, worker: WorkerProcess, returncode: int | None) -> None:
        tries = self.failed_starts.get(worker.model, 0) + 1
        self.failed_starts[worker.model] = tries
        words = "\n".join(worker.stderr) or "(no output)"
        log.error(
            "training worker for %s could not start (%s), try %d:\n%s",
            worker.model,
            describe_exit(returncode),
            tries,
            words,
        )
        spec = self.specs.get(worker.model)
        if tries < len(RESTART_DELAYS) and spec is not None:
            await asyncio.sleep(RESTART_DELAYS[tries])
            await self.ensure(spec)
            return
        self.failed_starts.pop(worker.model, None)
        last = worker.stderr[-1] if worker.stderr else describe_exit(returncode)
        failed = await asyncio.to_thread(
            self.jobs.fail_queued,
            worker.model,
            f"The training worker for `{worker.model}` could not start ({last}).",
        )
        for job in failed:
            await self._finished(job)

    async def _finished(self, job: Job) -> None:
        try:
            await self.on_finished(job)
        except Exception:
            log.exception("handling the end of job %s failed", job.id)

    def _interrupted(self, worker: str) -> None:
        """Fail the job a stopped worker was running, unless it can resume: that one stays
        running, and the next start queues it again."""
        running = self.jobs.find(states=frozenset({JobState.RUNNING}))
        if not any(j.worker == worker and j.kind in self.resumable for j in running):
            self.jobs.fail_running(INTERRUPTED, worker=worker, webhook=True)

    async def stop(self) -> None:
        """Close the workers' stdin (they exit at once) and wait for them briefly."""
        self.stopping = True
        workers = list(self.workers.values())
        for worker in workers:
            if worker.process.stdin is not None:
                worker.process.stdin.close()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            if worker.watcher is not None:
                worker.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.watcher
            await asyncio.to_thread(self._interrupted, worker.id)
