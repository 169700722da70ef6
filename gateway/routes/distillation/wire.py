"""Between OpenTracy's wire shapes and the distillation service's jobs."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
from gateway_schemas.distillation import (
    Artifacts,
    DistillationJob,
    DistillationRequest,
    DistillationStatus,
    PhaseEntry,
)

from gateway.errors import InvalidRequest
from gateway.jobs import Job, JobState

STATUSES: dict[JobState, DistillationStatus] = {
    JobState.QUEUED: "pending",
    JobState.RUNNING: "running",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}
STATES = {status: state for state, status in STATUSES.items()}
HIDDEN_CONFIG = ("prompts", "llama_quantize", "student_source")
"""Stored config keys not shown: the prompts are the job's data; a binary's path is the
server's business."""


def parse_request(body: Any) -> DistillationRequest:
    """A create or estimate body, read as OpenTracy reads it: unknown fields ignored, a
    `null` taken as the default."""
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_config")
    body = _without_nulls(body)
    try:
        return msgspec.convert(body, DistillationRequest, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = message.rpartition("at `$.")[2].rstrip("`") if "at `$." in message else None
        raise InvalidRequest(
            f"Invalid config: {message.replace('$.', '')}", param=path, code="invalid_config"
        ) from None


def _without_nulls(body: dict[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in body.items() if value is not None}
    if isinstance(out.get("config"), dict):
        out["config"] = {k: v for k, v in out["config"].items() if v is not None}
    return out


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def job_view(job: Job) -> DistillationJob:
    info = job.info
    phases = info.get("phases") or [{}]
    times = (job.created_at, job.started_at, job.finished_at, info.get("updated_at"))
    updated = max(t for t in (*times, phases[-1].get("started_at")) if t is not None)
    phase = info.get("phase", "initializing")
    if job.state == JobState.COMPLETED:
        phase = "completed"
    return DistillationJob(
        id=job.id,
        name=str(info.get("name", "")),
        description=str(info.get("description", "")),
        tenant_id=job.tenant or "default",
        status=STATUSES[job.state],
        phase=phase,
        config={k: v for k, v in job.config.items() if k not in HIDDEN_CONFIG},
        progress=dict(info.get("progress", {})),
        results=dict(info.get("results", {})),
        artifacts=dict(info.get("artifacts", {})),
        error=job.error,
        cost_accrued=round(job.cost, 6),
        created_at=iso(job.created_at) or "",
        updated_at=iso(updated) or "",
        started_at=iso(job.started_at),
        completed_at=iso(job.finished_at),
        phases=[
            PhaseEntry(name=str(p["name"]), started_at=iso(p["started_at"]) or "")
            for p in info.get("phases") or []
        ],
    )


def artifacts_view(job: Job) -> Artifacts:
    found = job.info.get("artifacts", {})
    return Artifacts(
        adapter_path=found.get("adapter_path"),
        gguf_paths=dict(found.get("gguf_paths", {})),
        tokenizer_path=found.get("tokenizer_path"),
        config_path=found.get("config_path"),
        adapter_name=found.get("adapter_name"),
        merged_path=found.get("merged_path"),
        files=dict(found.get("files", {})),
    )
