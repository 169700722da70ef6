"""The job store interface: jobs, their states, progress and logs.

A job moves `queued -> running -> completed | failed | cancelled` (a queued job may also go
straight to `cancelled`). Every method is synchronous and may block on the database: the
server calls them through `asyncio.to_thread`, worker processes call them directly. The
SQLite implementation is `gateway.jobs.sqlite`; a PostgreSQL one implements the same
methods.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import Any

import msgspec


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})


class NewJob(msgspec.Struct, kw_only=True):
    """What a submission stores: which trainer (`kind`) trains which base `model` on
    `data` with `config`, writing the adapter `output_name`."""

    kind: str
    model: str
    output_name: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    data: Any = None
    id: str | None = None
    """Chosen by the store (a UUID4) when None."""
    tenant: str | None = None
    info: dict[str, Any] = msgspec.field(default_factory=dict)


class Job(msgspec.Struct, kw_only=True):
    """One job as stored. `data` (the training examples) is loaded only on request."""

    id: str
    kind: str
    model: str
    state: JobState
    output_name: str
    config: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    learning_rate: float | None = None
    error: str | None = None
    adapter_path: str | None = None
    stop_requested: bool = False
    worker: str | None = None
    heartbeat_at: float | None = None
    """When the worker running the job last said it was alive (its lease)."""
    webhook: str | None = None
    """None (nothing to send), `pending`, `sent` or `failed`."""
    tenant: str | None = None
    """Whose job it is (a distillation job's `tenant_id`); None for training jobs."""
    info: dict[str, Any] = msgspec.field(default_factory=dict)
    """What a job kind keeps beside the common fields (a distillation job's name, phase,
    progress, results and artifacts), updated with `JobStore.update`."""
    cost: float = 0.0
    """US dollars the job has spent on priced models (a teacher's usage), as it accrues."""
    data: Any = None

    @property
    def progress(self) -> float:
        """Fraction of steps done, 0..1 (1 once completed)."""
        if self.state == JobState.COMPLETED:
            return 1.0
        return min(self.step / self.total_steps, 1.0) if self.total_steps else 0.0


class StepMetrics(msgspec.Struct, kw_only=True):
    step: int
    epoch: float
    loss: float
    learning_rate: float
    time: float


class LogLine(msgspec.Struct, kw_only=True):
    time: float
    message: str


def merge_info(stored: dict[str, Any], info: dict[str, Any] | None) -> dict[str, Any]:
    """`stored` with `info` merged in, as `JobStore.update` keeps a job's own fields: a
    key whose old and new values are both objects gets their union, any other is set."""
    merged = dict(stored)
    for key, value in (info or {}).items():
        old = merged.get(key)
        merged[key] = (
            {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return merged


def restarted(info: dict[str, Any], max_restarts: int) -> dict[str, Any] | None:
    """A running job's info counting one more restart, as `requeue_running` stores it;
    None when it was restarted `max_restarts` times already."""
    restarts = int(info.get("restarts", 0))
    if restarts >= max_restarts:
        return None
    return {**info, "restarts": restarts + 1}


class JobStore(ABC):
    """Where jobs live. Methods that change a job check its state in the same
    transaction, so two processes never both claim, finish or cancel one job."""

    def close(self) -> None:
        """Release connections (a pooled store); the default has none."""

    @abstractmethod
    def submit(self, job: NewJob, *, max_queued: int | None = None) -> Job:
        """Store a new queued job. With `max_queued`, raise `QueueFull` when that many jobs
        are already queued."""

    @abstractmethod
    def get(self, job_id: str, *, with_data: bool = False) -> Job | None: ...

    @abstractmethod
    def find(
        self,
        *,
        states: frozenset[JobState] | None = None,
        kinds: frozenset[str] | None = None,
        model: str | None = None,
        tenant: str | None = None,
    ) -> list[Job]:
        """Jobs, oldest first."""

    @abstractmethod
    def claim(self, model: str, worker: str, kinds: frozenset[str]) -> Job | None:
        """Move the oldest queued job of `model` (of one of `kinds`) to running for
        `worker`, and return it with its data; None when there is none."""

    @abstractmethod
    def record_step(self, job_id: str, metrics: StepMetrics, total_steps: int) -> bool:
        """Append one step's metrics and update the job's progress. False, recording
        nothing, when the job is no longer running (cancelled, or failed by a restart) or
        was asked to stop: the trainer should stop."""

    @abstractmethod
    def update(
        self, job_id: str, info: dict[str, Any] | None = None, *, add_cost: float = 0.0
    ) -> bool:
        """Merge `info` into the job's `info` (a key whose old and new values are both
        dicts is merged one level down; others are replaced) and add `add_cost` to its
        cost, in one transaction. Applied while the job is running; False when it is not
        running or was asked to stop (the job should stop; what it spent is still added)."""

    @abstractmethod
    def log(self, job_id: str, message: str) -> None: ...

    @abstractmethod
    def metrics(self, job_id: str, limit: int | None = None) -> list[StepMetrics]:
        """The last `limit` (all when None) step metrics, in step order."""

    @abstractmethod
    def logs(self, job_id: str, limit: int | None = None) -> list[LogLine]: ...

    @abstractmethod
    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        adapter_path: str | None = None,
        webhook: bool = False,
    ) -> Job | None:
        """End a running job in a terminal state (another state is a ValueError); None
        when it was not running. With `webhook`, the job's webhook delivery becomes
        `pending`."""

    @abstractmethod
    def cancel_queued(self, job_id: str, *, webhook: bool = False) -> Job | None:
        """Cancel a job that is still queued; None (nothing changed) otherwise."""

    @abstractmethod
    def request_stop(self, job_id: str) -> Job | None:
        """Ask a running job to stop at its next step; None when it is not running."""

    shared: bool = False
    """Whether other gateways (replicas) may use the same store: then a running job is
    only taken for abandoned once its lease ran out (`heartbeat`, `stale_after`), never
    because this process restarted."""

    @abstractmethod
    def heartbeat(self, worker: str) -> int:
        """Renew the lease of `worker`'s running jobs (their `heartbeat_at`); how many.
        A claim and each recorded step renew it too."""

    @abstractmethod
    def fail_running(
        self,
        message: str,
        *,
        worker: str | None = None,
        webhook: bool = False,
        stale_after: float | None = None,
    ) -> list[Job]:
        """Fail every running job (of `worker`, or all; with `stale_after`, only those
        whose lease is older than that many seconds): what a restart or a dead worker
        leaves behind. `message` may contain `{step}` and `{total}`."""

    @abstractmethod
    def requeue_running(
        self,
        kinds: frozenset[str],
        *,
        max_restarts: int,
        worker: str | None = None,
        stale_after: float | None = None,
    ) -> list[Job]:
        """Put running jobs of `kinds` (of `worker`, or all; with `stale_after`, only
        those whose lease ran out) back in the queue, ahead of later jobs (a restart
        interrupted them and they can resume), counting it in `info["restarts"]`; a job
        already restarted `max_restarts` times stays running (for `fail_running`)."""

    @abstractmethod
    def fail_queued(self, model: str, message: str) -> list[Job]:
        """Fail every queued job of `model` with `message` (no worker can run them)."""

    @abstractmethod
    def set_webhook(self, job_id: str, status: str) -> None:
        """Record a webhook delivery's outcome: `sent` or `failed`."""

    @abstractmethod
    def position(self, job_id: str) -> int | None:
        """1-based position of a queued job among the queued jobs of its model."""


class QueueFull(Exception):
    """The queue holds `max_queued` jobs already."""
