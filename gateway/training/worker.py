"""The training worker: a process that runs the jobs of one base model, one at a time.

The server starts it as `python -m gateway.training.worker` and writes one JSON line to
its stdin (`WorkerConfig`); later lines are wake-ups (a job was queued). When stdin closes
(the server stopped or died) the worker exits at once: a job it was running stays
`running` in the database until the next server start fails it, so no job is reported as
running after a crash. It claims jobs from the job store, runs the trainer named by each
job's `kind`, records every step, and writes one JSON line per event on stdout:
`{"event": "ready"}`, `{"event": "started", "job": id}`, `{"event": "finished", "job": id,
"state": ...}`. Logs go to stderr.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import msgspec

from gateway.adapters.store import AdapterStore
from gateway.collect import collect_backends
from gateway.engine.backend import Backend, BackendFactory, ModelSpec
from gateway.jobs import Job, JobState, StepMetrics
from gateway.jobs.open import open_job_store
from gateway.plugins import GatewayPluginManager
from gateway.settings import Settings
from gateway.training.registry import collect_trainers
from gateway.training.trainer import JobStopped, Trainer, TrainingContext

log = logging.getLogger("gateway.training.worker")

POLL_SECONDS = 1.0
"""How often an idle worker looks for queued jobs without being woken (jobs queued by
another gateway sharing the database)."""


class WorkerConfig(msgspec.Struct, kw_only=True):
    worker: str
    model: ModelSpec
    data_dir: str
    database: str
    """The job store's URL (`Settings.database()`)."""
    plugins: list[str]
    """Modules of the server's plugins, registered here in the same order."""
    path: list[str] = msgspec.field(default_factory=list)
    """The server's `sys.path`, so that every plugin module it imported imports here."""
    threads: int = 0
    heartbeat: float = 5.0
    """Seconds between renewals of the running job's lease (`JobStore.heartbeat`): a
    gateway sharing the job store takes a job whose lease is older than `[training]
    lease_seconds` for abandoned."""
    preload: bool = False
    log_level: str = "info"
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    """The server's settings (as `msgspec.to_builtins` writes them): what plugins' backend
    factories read when a job needs another model (a distillation job's teacher)."""
    models: list[ModelSpec] = msgspec.field(default_factory=list)
    """Every model the server serves, so that a job can build one by name."""


class Worker:
    def __init__(self, config: WorkerConfig, *, events: bool = True):
        self.config = config
        self.events = events
        """Whether `emit` writes event lines on stdout (the server reads them from a local
        worker process; a Ray task reports through its result instead)."""
        self.data_dir = Path(config.data_dir)
        self.jobs = open_job_store(config.database)
        pm = GatewayPluginManager()
        for name in config.plugins:
            if pm.get_plugin(name) is None:
                pm.register(importlib.import_module(name), name=name)
        self.trainers: dict[str, Trainer] = collect_trainers(pm)
        self.adapters = AdapterStore.for_model(self.data_dir, config.model.name)
        self.resident: dict[str, Any] = {}
        self.wake = threading.Event()
        self.pm = pm
        self._factories: dict[str, BackendFactory] | None = None

    def backend(self, name: str) -> Backend:
        """A new (unloaded) backend of the served model `name`, built as the server does."""
        spec = next((m for m in self.config.models if m.name == name), None)
        if spec is None:
            served = ", ".join(m.name for m in self.config.models) or "none"
            raise ValueError(f"The model `{name}` is not served (served: {served}).")
        if self._factories is None:
            settings = msgspec.convert(self.config.settings, Settings, strict=False)
            self._factories = collect_backends(self.pm, settings)
        factory = self._factories.get(spec.backend)
        if factory is None:
            raise ValueError(f"No plugin in this worker registers the `{spec.backend}` backend.")
        return factory(spec, self.data_dir)

    def emit(self, event: str, **fields: Any) -> None:
        if not self.events:
            return
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    def context(self, job: Job | None = None) -> TrainingContext:
        """The context of `job`'s run; without a job (for `prepare`), steps and log lines
        go nowhere."""
        started = time.time()

        def on_step(step: int, total: int, loss: float, lr: float, epoch: float) -> bool:
            if job is None:
                return True
            metrics = StepMetrics(
                step=step, epoch=epoch, loss=loss, learning_rate=lr, time=time.time() - started
            )
            return self.jobs.record_step(job.id, metrics, total)

        def on_log(message: str) -> None:
            if job is not None:
                self.jobs.log(job.id, message)

        def on_update(info: dict[str, Any], add_cost: float) -> bool:
            return True if job is None else self.jobs.update(job.id, info, add_cost=add_cost)

        return TrainingContext(
            spec=self.config.model,
            data_dir=self.data_dir,
            adapters=self.adapters,
            resident=self.resident,
            threads=self.config.threads,
            on_step=on_step,
            on_log=on_log,
            backends=self.backend,
            on_update=on_update,
            plugins=self.pm,
        )

    def preload(self) -> None:
        for trainer in self.trainers.values():
            try:
                trainer.prepare(self.context())
            except Exception:
                log.exception("trainer %s could not prepare", trainer.name)

    def run_job(self, job: Job) -> None:
        self.emit("started", job=job.id)
        self.jobs.log(
            job.id,
            f"started {job.kind} job on {job.model} (worker {self.config.worker}, pid "
            f"{os.getpid()} on {socket.gethostname()})",
        )
        state, error, path = JobState.COMPLETED, None, None
        try:
            path = str(self.trainers[job.kind].run(job, self.context(job)))
        except JobStopped as stopped:
            state = JobState.CANCELLED
            current = self.jobs.get(job.id)
            step = current.step if current else 0
            error = str(stopped) or f"Stopped on request after step {step}; no adapter was written."
        except Exception as exc:
            state, error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
        if error:
            self.jobs.log(job.id, error)
        else:
            self.jobs.log(job.id, f"completed: adapter `{job.output_name}` written")
        finished = self.jobs.finish(job.id, state, error=error, adapter_path=path, webhook=True)
        self.emit("finished", job=job.id, state=finished.state if finished else "gone")

    def beat(self, stop: threading.Event) -> None:
        """Renew the lease of the job this worker runs, every `config.heartbeat` seconds
        (a trainer may go long between steps: loading a model, a teacher's answers), until
        `stop` is set."""
        while not stop.wait(self.config.heartbeat):
            try:
                self.jobs.heartbeat(self.config.worker)
            except Exception:  # a database that is away for a moment: the next beat
                log.warning("heartbeat failed", exc_info=True)

    def serve(self) -> None:
        kinds = frozenset(self.trainers)
        beating = threading.Thread(target=self.beat, args=(threading.Event(),), daemon=True)
        beating.start()
        if self.config.preload:
            self.preload()
        self.emit("ready")
        while True:
            job = self.jobs.claim(self.config.model.name, self.config.worker, kinds)
            if job is None:
                self.wake.wait(POLL_SECONDS)
                self.wake.clear()
                continue
            self.run_job(job)


def _watch_stdin(wake: threading.Event) -> None:
    """Wake-ups arrive as lines; end of file means the server is gone: exit now."""
    for _line in sys.stdin:
        wake.set()
    os._exit(0)


def main() -> None:
    config = msgspec.json.decode(sys.stdin.readline().encode(), type=WorkerConfig)
    sys.path.extend(entry for entry in config.path if entry not in sys.path)
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker[{os.getpid()}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    worker = Worker(config)
    threading.Thread(target=_watch_stdin, args=(worker.wake,), daemon=True).start()
    worker.serve()


if __name__ == "__main__":
    main()
