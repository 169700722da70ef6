"""What a trainer plugin implements, and what it is given while it runs.

A trainer is registered by name through the `register_trainers` hook:

    @hookimpl
    def register_trainers(register):
        register(MyTrainer())

The server imports it to know its name and check submissions (`check`); only the training
worker process calls `run`, so a trainer module must not import torch at module level.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pluggy

from gateway.adapters.store import AdapterStore
from gateway.engine.backend import Backend, ModelSpec
from gateway.jobs.store import Job


class JobStopped(Exception):
    """Raised inside a trainer (by `TrainingContext.step`) when its job was cancelled or
    stopped: the worker ends the job `cancelled` and writes no adapter. A message, when
    given, is the job's error instead of the worker's own."""


class Trainer(ABC):
    """One kind of training job (`sft`, `grpo`, `finetune`, ...)."""

    name: ClassVar[str]
    resumable: ClassVar[bool] = False
    """True when `run` picks up where an interrupted run of the same job stopped (from
    what it wrote): a server restart then queues the job again instead of failing it."""

    def check(self, data: Any, config: dict[str, Any]) -> None:
        """Refuse a submission early: raise `gateway.errors.InvalidRequest` saying what is
        wrong with `data` or `config`. Called in the server, at submission."""

    def prepare(self, context: TrainingContext) -> None:
        """Load what `run` will need (the base model) into `context.resident`, when a
        worker starts with `[training] preload`. The default does nothing."""

    @abstractmethod
    def run(self, job: Job, context: TrainingContext) -> Path:
        """Train on `job.data` with `job.config`, report each step with `context.step`,
        write the adapter through `context.install` and return its path. Runs in a
        worker process; an exception fails the job with its message."""


class TrainingContext:
    """What the worker gives a running trainer.

    `resident` is a dict kept for the worker's whole life (one worker serves one base
    model): a trainer keeps its loaded base model there so the next job starts at once.

    `reward` scores responses to one chat prompt (messages before the answer) -> one
    float per response, higher is better; the judge of a distillation job; None when the
    job has none.

    `backend(name)` builds (not loads) the backend of another model the server serves,
    from the server's settings and plugins: a distillation job's teacher and judge. The
    caller awaits its `load()` and `unload()` in its own event loop.
    """

    def __init__(
        self,
        *,
        spec: ModelSpec,
        data_dir: Path,
        adapters: AdapterStore,
        resident: dict[str, Any],
        threads: int,
        on_step: Callable[[int, int, float, float, float], bool],
        on_log: Callable[[str], None],
        reward: Callable[[list[dict[str, Any]], list[str]], list[float]] | None = None,
        backends: Callable[[str], Backend] | None = None,
        on_update: Callable[[dict[str, Any], float], bool] | None = None,
        plugins: pluggy.PluginManager | None = None,
    ):
        self.spec = spec
        self.data_dir = data_dir
        self.adapters = adapters
        self.resident = resident
        self.threads = threads
        self._on_step = on_step
        self._on_log = on_log
        self.reward = reward
        self._backends = backends
        self._on_update = on_update
        self.plugins = plugins
        """The worker's plugin manager (the server's plugins), for hooks a trainer calls
        itself (`register_rewards`)."""
        self._phases: list[dict[str, Any]] = []

    def backend(self, name: str) -> Backend:
        """A new backend for the served model `name` (not loaded yet)."""
        if self._backends is None:
            raise RuntimeError("this worker cannot build other models' backends")
        return self._backends(name)

    def update(self, info: dict[str, Any] | None = None, *, add_cost: float = 0.0) -> None:
        """Merge `info` into the job's own fields (`Job.info`: a distillation job's phase,
        progress, results, artifacts) and add `add_cost` US dollars to what it spent;
        raises `JobStopped` when the job was cancelled meanwhile (the cost still counts)."""
        if self._on_update is not None and not self._on_update(info or {}, add_cost):
            raise JobStopped()

    def phase(self, name: str) -> None:
        """Enter phase `name` of the job: `Job.info` keeps the current `phase` and the
        timeline `phases` (`[{"name", "started_at"}]`), which the job's trace turns into
        child spans and the dashboard shows; raises `JobStopped` as `update` does."""
        self._phases.append({"name": name, "started_at": time.time()})
        self.update({"phase": name, "phases": list(self._phases)})

    def step(self, step: int, total: int, loss: float, learning_rate: float, epoch: float) -> None:
        """Record step `step` of `total` (1-based); raises `JobStopped` when the job was
        cancelled or stopped meanwhile."""
        if not self._on_step(step, total, loss, learning_rate, epoch):
            raise JobStopped()

    def log(self, message: str) -> None:
        """A line for the job's log (NPU-STACK's `log`)."""
        self._on_log(message)

    def install(self, staging: Path, name: str) -> Path:
        """Put a filled staging directory (`self.adapters.staging()`) in place as adapter
        `name`, replacing an older version atomically."""
        return self.adapters.install(staging, name, replace=True)
