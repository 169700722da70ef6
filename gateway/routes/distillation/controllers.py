"""OpenTracy's distillation routes: create, list, read, cancel, artifacts, logs and the
cost estimate. `tenant_id` (a query parameter, `"default"` when absent) scopes every read:
another tenant's job is a 404, as OpenTracy's contract says."""

from __future__ import annotations

from typing import Any

from gateway_schemas.distillation import (
    Artifacts,
    DistillationJob,
    DistillationList,
    DistillationLogs,
    Estimate,
)
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from gateway.errors import InvalidRequest
from gateway.gateway import Gateway
from gateway.routes.distillation.errors import EXCEPTION_HANDLERS
from gateway.routes.distillation.wire import STATES, artifacts_view, job_view, parse_request

MAX_LIMIT = 100


class DistillationController(Controller):
    path = "/v1/distillation"
    exception_handlers = EXCEPTION_HANDLERS

    @post("/", status_code=200)
    async def create(
        self, data: JSONBody[dict[str, Any]], gateway: NamedDependency[Gateway]
    ) -> DistillationJob:
        job = await gateway.distillation.submit(parse_request(data))
        return job_view(job)

    @post("/estimate", status_code=200)
    async def estimate(
        self, data: JSONBody[dict[str, Any]], gateway: NamedDependency[Gateway]
    ) -> Estimate:
        request = parse_request(data)
        plan = await gateway.distillation.plan(request)
        balance = plan.budget.balance
        return Estimate(
            estimated_cost=plan.estimate.cost,
            currency="USD",
            breakdown=plan.estimate.breakdown,
            tokens=plan.estimate.tokens,
            prompts=len(plan.data["train"]) + len(plan.data["eval"]),
            priced=plan.estimate.priced,
            tenant_id=request.tenant_id,
            budget=plan.budget.budget,
            spent=plan.budget.spent,
            balance=None if balance is None else round(balance, 6),
            sufficient=balance is None or plan.estimate.cost <= balance,
        )

    @get("/")
    async def list_jobs(
        self,
        gateway: NamedDependency[Gateway],
        tenant_id: FromQuery[str] = "default",
        status: FromQuery[str | None] = None,
        limit: FromQuery[int] = 20,
        offset: FromQuery[int] = 0,
    ) -> DistillationList:
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest(
                f"`limit` must be between 1 and {MAX_LIMIT}.", param="limit", code="invalid_config"
            )
        if offset < 0:
            raise InvalidRequest(
                "`offset` must be 0 or more.", param="offset", code="invalid_config"
            )
        if status is not None and status not in STATES:
            raise InvalidRequest(
                f"Unknown status `{status}`; one of {', '.join(STATES)}.",
                param="status",
                code="invalid_config",
            )
        jobs = await gateway.distillation.find(tenant_id, STATES[status] if status else None)
        page = jobs[offset : offset + limit]
        return DistillationList(
            jobs=[job_view(job) for job in page],
            total=len(jobs),
            has_more=offset + len(page) < len(jobs),
        )

    @get("/{job_id:str}")
    async def read(
        self,
        job_id: FromPath[str],
        gateway: NamedDependency[Gateway],
        tenant_id: FromQuery[str] = "default",
    ) -> DistillationJob:
        return job_view(await gateway.distillation.get(job_id, tenant_id))

    @post("/{job_id:str}/cancel", status_code=200)
    async def cancel(
        self,
        job_id: FromPath[str],
        gateway: NamedDependency[Gateway],
        tenant_id: FromQuery[str] = "default",
    ) -> DistillationJob:
        return job_view(await gateway.distillation.cancel(job_id, tenant_id))

    @get("/{job_id:str}/artifacts")
    async def artifacts(
        self,
        job_id: FromPath[str],
        gateway: NamedDependency[Gateway],
        tenant_id: FromQuery[str] = "default",
    ) -> Artifacts:
        return artifacts_view(await gateway.distillation.get(job_id, tenant_id))

    @get("/{job_id:str}/logs")
    async def logs(
        self,
        job_id: FromPath[str],
        gateway: NamedDependency[Gateway],
        tenant_id: FromQuery[str] = "default",
    ) -> DistillationLogs:
        return DistillationLogs(logs=await gateway.distillation.logs(job_id, tenant_id))
