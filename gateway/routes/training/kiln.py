"""Kiln's training routes: submit SFT and GRPO jobs, read their status, list the queue and
cancel a queued job, over the training service (`gateway.training`).

Requests have Kiln's fields and defaults; every default is written into the stored job's
config, so a job says exactly how it was trained. A top-level `model` (an addition) picks
the base model; without it, the first served model that takes adapters is trained.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from gateway_schemas.openai import ErrorResponse
from gateway_schemas.training import (
    CancelResponse,
    GrpoConfig,
    GrpoRequest,
    QueuedJob,
    SftConfig,
    SftRequest,
    TrainingQueue,
    TrainingStatus,
    TrainingSubmitted,
)
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody

from gateway.gateway import Gateway
from gateway.jobs import TERMINAL_STATES, Job, JobState
from gateway.routes.training.errors import KILN_HANDLERS
from gateway.routes.training.examples import INVALID, completions_count, grpo_data, sft_data
from gateway.routes.training.status import training_status

BODY_LIMIT = 64 * 1024**2
"""Kiln's body limit on its training routes."""
LOSS_HISTORY = 1024
"""Steps of `loss_history` on a single job's status, as Kiln's later versions keep."""
ERRORS = {
    400: ResponseSpec(ErrorResponse, description="Invalid request"),
    404: ResponseSpec(ErrorResponse, description="Unknown model or job"),
    503: ResponseSpec(ErrorResponse, description="The training queue is full"),
}
NOT_FOUND = {404: ResponseSpec(ErrorResponse, description="Unknown job")}


def job_config(config: SftConfig | GrpoConfig) -> dict[str, Any]:
    """The stored config: every setting of the request with its default, the adapter's
    name aside (the job keeps it as `output_name`)."""
    stored = msgspec.structs.asdict(config)
    stored.pop("output_name")
    return stored


class KilnTrainingController(Controller):
    path = "/v1/train"
    exception_handlers = KILN_HANDLERS

    @post(
        "/sft",
        status_code=200,
        opt={"invalid_code": INVALID},
        request_max_body_size=BODY_LIMIT,
        responses=ERRORS,
    )
    async def sft(
        self, data: JSONBody[SftRequest], gateway: NamedDependency[Gateway]
    ) -> TrainingSubmitted:
        config = data.config or SftConfig()
        examples = sft_data(data.examples)
        job, position = await gateway.training.submit(
            "sft", examples, job_config(config), model=data.model, output_name=config.output_name
        )
        message = (
            f"Queued SFT training with {len(examples)} examples (position {position} in queue)"
        )
        return _submitted(job, message)

    @post(
        "/grpo",
        status_code=200,
        opt={"invalid_code": INVALID},
        request_max_body_size=BODY_LIMIT,
        responses=ERRORS,
    )
    async def grpo(
        self, data: JSONBody[GrpoRequest], gateway: NamedDependency[Gateway]
    ) -> TrainingSubmitted:
        config = data.config or GrpoConfig()
        groups = grpo_data(data.groups)
        job, position = await gateway.training.submit(
            "grpo", groups, job_config(config), model=data.model, output_name=config.output_name
        )
        message = (
            f"Queued GRPO training with {len(groups)} groups ({completions_count(groups)} "
            f"completions, position {position} in queue)"
        )
        return _submitted(job, message)

    @get("/status", responses={200: ResponseSpec(list[TrainingStatus])})
    async def status(self, gateway: NamedDependency[Gateway]) -> list[TrainingStatus]:
        now = time.time()
        return [training_status(job, now=now) for job in await gateway.training.find()]

    @get("/status/{job_id:str}", responses=NOT_FOUND)
    async def job_status(
        self, job_id: FromPath[str], gateway: NamedDependency[Gateway]
    ) -> TrainingStatus:
        job = await gateway.training.get(job_id)
        history = await gateway.training.metrics(job_id, LOSS_HISTORY)
        return training_status(job, history=history)

    @get("/queue")
    async def queue(self, gateway: NamedDependency[Gateway]) -> TrainingQueue:
        now = time.time()
        jobs = await gateway.training.find()
        running = [training_status(j, now=now) for j in jobs if j.state == JobState.RUNNING]
        finished = sorted(
            (j for j in jobs if j.state in TERMINAL_STATES), key=lambda j: -j.created_at
        )
        return TrainingQueue(
            running=running[0] if running else None,
            queued=_queued(jobs),
            completed=[training_status(j, now=now) for j in finished],
            running_jobs=running,
        )

    @delete(
        "/queue/{job_id:str}",
        status_code=200,
        responses={**NOT_FOUND, 409: ResponseSpec(ErrorResponse, description="Not queued")},
    )
    async def cancel(
        self, job_id: FromPath[str], gateway: NamedDependency[Gateway]
    ) -> CancelResponse:
        job = await gateway.training.cancel(job_id)
        return CancelResponse(job_id=job.id)

    @post("/stop/{job_id:str}", status_code=200, responses=NOT_FOUND)
    async def stop(
        self, job_id: FromPath[str], gateway: NamedDependency[Gateway]
    ) -> TrainingStatus:
        """(Addition) Cancel a queued job, or stop a running one at its next step (it ends
        `cancelled`, writing no adapter); a finished job is returned as it is. Kiln's
        `DELETE /v1/train/queue/{job_id}` cancels queued jobs only."""
        job = await gateway.training.stop_job(job_id)
        return training_status(job)


def _submitted(job: Job, message: str) -> TrainingSubmitted:
    return TrainingSubmitted(
        job_id=job.id,
        state="queued",
        message=message,
        adapter_name=job.output_name,
        model=job.model,
    )


def _queued(jobs: list[Job]) -> list[QueuedJob]:
    """The queued jobs (oldest first), each with its position among its model's."""
    seen: dict[str, int] = {}
    queued = []
    for job in jobs:
        if job.state != JobState.QUEUED:
            continue
        seen[job.model] = seen.get(job.model, 0) + 1
        queued.append(
            QueuedJob(
                job_id=job.id,
                job_type=job.kind,
                adapter_name=job.output_name,
                position=seen[job.model],
                model=job.model,
            )
        )
    return queued
