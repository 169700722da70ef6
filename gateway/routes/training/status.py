"""A stored job as each dialect reports it: Kiln's `TrainingStatus`, NPU-STACK's status."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, cast

from gateway_schemas.training import (
    FinetuneConfig,
    FinetuneStatus,
    LossPoint,
    TrainingState,
    TrainingStatus,
)

from gateway.jobs import Job, JobState, StepMetrics

FINETUNE_STATUS: dict[JobState, FinetuneStatus] = {
    JobState.QUEUED: "pending",
    JobState.RUNNING: "running",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "stopped",
}


def iso(timestamp: float) -> str:
    """Epoch seconds as ISO 8601 in UTC (`...Z`)."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def training_status(
    job: Job, *, now: float | None = None, history: list[StepMetrics] | None = None
) -> TrainingStatus:
    """Kiln's view of `job`; with `history`, its `loss_history` too."""
    now = time.time() if now is None else now
    elapsed = max((job.finished_at or now) - job.created_at, 0.0)
    since = max(now - job.created_at, 0.0)
    status = TrainingStatus(
        job_id=job.id,
        state=cast(TrainingState, job.state.value),
        progress=round(job.progress, 4),
        current_loss=job.loss,
        adapter_name=job.output_name,
        started_at=f"{int(since)}s ago",
        elapsed_secs=round(elapsed, 2),
        job_type=job.kind,
        model=job.model,
        error=job.error,
        step=job.step,
        total_steps=job.total_steps,
        created_at=iso(job.created_at),
    )
    if history is not None:
        status.loss_history = [
            LossPoint(step=m.step, loss=m.loss, learning_rate=m.learning_rate) for m in history
        ]
    return status


def finetune_status(job: Job) -> FinetuneStatus:
    """NPU-STACK's status of `job`: a running job asked to stop is `stopping`."""
    if job.state == JobState.RUNNING and job.stop_requested:
        return "stopping"
    return FINETUNE_STATUS[job.state]


def finetune_config(config: dict[str, Any]) -> FinetuneConfig:
    """A fine-tune job's stored config (the trainers' keys) under NPU-STACK's names."""
    return FinetuneConfig(
        epochs=int(config.get("epochs", 3)),
        batch_size=int(config.get("batch_size", 4)),
        learning_rate=float(config.get("learning_rate", 2e-4)),
        use_lora=True,
        lora_r=int(config.get("lora_rank", 16)),
        lora_alpha=float(config.get("lora_alpha", 32)),
        text_column=str(config.get("text_column", "text")),
        max_length=int(config.get("max_length", 512)),
    )
