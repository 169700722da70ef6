"""NPU-STACK's fine-tune routes: start a LoRA fine-tune of a served model on a dataset,
list the fine-tune jobs, read one (steps, loss, learning rate, log lines) and stop one.

A fine-tune is a job of the `finetune` trainer: its config has the trainers' keys
(`lora_r` is stored as `lora_rank`), the dataset's name under `dataset`, and `auto_load`
false (its adapter is named by chat requests, never made the default). Errors are
FastAPI's `{"detail": "..."}`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from gateway_schemas.training import (
    FinetuneJobDetail,
    FinetuneJobs,
    FinetuneJobSummary,
    FinetuneMetric,
    FinetuneStarted,
    FinetuneStopped,
)
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.params import FromPath

from gateway.engine import Capability
from gateway.errors import NotFound
from gateway.gateway import Gateway
from gateway.jobs import Job, JobState
from gateway.routes.training import datasets as ds
from gateway.routes.training.errors import NPU_HANDLERS
from gateway.routes.training.finetune_form import StartForm, read_start_form, start_schema
from gateway.routes.training.status import finetune_config, finetune_status

KIND = "finetune"
METRICS = 50
LOG_LINES = 20
DETAIL = 'FastAPI\'s `{"detail": "..."}`'
ERRORS = {
    400: ResponseSpec(dict[str, str], description=DETAIL),
    404: ResponseSpec(dict[str, str], description=DETAIL),
    422: ResponseSpec(dict[str, str], description=DETAIL),
}


@dataclass
class _StartOperation(Operation):
    """The start route's OpenAPI operation: its form or JSON body, which the handler reads
    itself (a form may carry the dataset file)."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={
                "multipart/form-data": OpenAPIMediaType(schema=start_schema(upload=True)),
                "application/x-www-form-urlencoded": OpenAPIMediaType(schema=start_schema()),
                "application/json": OpenAPIMediaType(schema=start_schema()),
            },
            required=True,
        )


class FinetuneController(Controller):
    path = "/api/finetune"
    exception_handlers = NPU_HANDLERS

    @post(
        "/start",
        status_code=200,
        request_max_body_size=ds.MAX_BYTES + 1024**2,
        operation_class=_StartOperation,
        responses=ERRORS,
    )
    async def start(
        self, request: Request[Any, Any, Any], gateway: NamedDependency[Gateway]
    ) -> FinetuneStarted:
        form = await read_start_form(request)
        fields = form.fields
        model = gateway.models.resolve(fields.model_id, Capability.ADAPTERS)
        name, content = await _dataset(gateway, form)
        rows = await asyncio.to_thread(ds.read_dataset, content, name, fields.text_column)
        config = {
            "epochs": fields.epochs,
            "learning_rate": fields.learning_rate,
            "lora_rank": fields.lora_r,
            "lora_alpha": fields.lora_alpha,
            "batch_size": fields.batch_size,
            "max_length": fields.max_length,
            "base_adapter": None,
            "auto_load": False,
            "checkpoint_interval": None,
            "dataset": form.dataset_name,
            "text_column": fields.text_column,
        }
        job, _ = await gateway.training.submit(
            KIND, rows, config, model=model, output_name=fields.output_name
        )
        return FinetuneStarted(
            job_id=job.id,
            status=finetune_status(job),
            model=job.model,
            dataset=form.dataset_name,
            config=finetune_config(job.config),
        )

    @get("/jobs")
    async def jobs(self, gateway: NamedDependency[Gateway]) -> FinetuneJobs:
        jobs = await gateway.training.find(kinds=frozenset({KIND}))
        return FinetuneJobs(jobs=[_summary(job) for job in reversed(jobs)])

    @get("/status/{job_id:str}", responses=ERRORS)
    async def status(
        self, job_id: FromPath[str], gateway: NamedDependency[Gateway]
    ) -> FinetuneJobDetail:
        job = await _finetune_job(gateway, job_id)
        metrics = await gateway.training.metrics(job_id, METRICS)
        logs = await gateway.training.logs(job_id, LOG_LINES)
        return FinetuneJobDetail(
            id=job.id,
            model_name=job.model,
            dataset=_dataset_name(job),
            status=finetune_status(job),
            created_at=job.created_at,
            started_at=job.started_at,
            completed_at=job.finished_at,
            current_step=job.step,
            current_epoch=job.epoch,
            total_steps=job.total_steps,
            config=finetune_config(job.config),
            metrics=[
                FinetuneMetric(
                    step=m.step, epoch=m.epoch, loss=m.loss, learning_rate=m.learning_rate
                )
                for m in metrics
            ],
            log=[line.message for line in logs],
            output_dir=job.adapter_path,
            resulting_model_id=job.output_name if job.state == JobState.COMPLETED else None,
            error=job.error,
        )

    @post("/stop/{job_id:str}", status_code=200, responses=ERRORS)
    async def stop(
        self, job_id: FromPath[str], gateway: NamedDependency[Gateway]
    ) -> FinetuneStopped:
        job = await _finetune_job(gateway, job_id)
        if job.state in (JobState.QUEUED, JobState.RUNNING):
            job = await gateway.training.stop_job(job_id)
            if job.state in (JobState.CANCELLED, JobState.RUNNING):
                return FinetuneStopped(status=finetune_status(job))
        return FinetuneStopped(status=finetune_status(job), message="Job is not running")


async def _dataset(gateway: Gateway, form: StartForm) -> tuple[str, bytes]:
    """The dataset's file name (its extension gives the format) and bytes: the upload, or
    the file of the datasets folder that `dataset` names."""
    if form.upload is not None:
        return form.upload
    folder = gateway.settings.data_path()
    path = await asyncio.to_thread(ds.dataset_path, folder, form.dataset_name)
    return PurePosixPath(form.dataset_name).name, await asyncio.to_thread(path.read_bytes)


async def _finetune_job(gateway: Gateway, job_id: str) -> Job:
    job = await gateway.training.get(job_id)
    if job.kind != KIND:
        raise NotFound(f"There is no fine-tune job `{job_id}`.", param="job_id")
    return job


def _dataset_name(job: Job) -> str:
    return str(job.config.get("dataset", ""))


def _summary(job: Job) -> FinetuneJobSummary:
    return FinetuneJobSummary(
        id=job.id,
        model_name=job.model,
        dataset=_dataset_name(job),
        status=finetune_status(job),
        created_at=job.created_at,
        current_step=job.step,
        current_epoch=job.epoch,
        error=job.error,
    )
