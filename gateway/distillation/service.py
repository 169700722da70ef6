"""`DistillationService`: submitting, reading and cancelling distillation jobs.

A distillation job is a job of the training job store (kind `distillation`), run by the
training worker of its student model with the `distillation` trainer of the
`gateway-trainers` plugin: it survives restarts like any training job and is cancelled the
same way. What OpenTracy keeps in its own row (name, description, phase, progress,
results, artifacts) is the job's `info`; `cost` is what its teacher and judge calls cost,
added as they are made.

Everything that can be refused is refused here, before any teacher call: an unknown
teacher, judge or student, ranges, prompt sources, quantization types the gateway cannot
write (the trainer's `check`), and a cost estimate above the tenant's budget (402).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from gateway_schemas.distillation import DistillationConfig, DistillationRequest

from gateway.adapters.models import adapter_model
from gateway.adapters.names import check_name
from gateway.distillation import prompts as sources
from gateway.distillation.estimate import CostEstimate, Prices, estimate, held_out_count
from gateway.distillation.reward import collect_rewards
from gateway.engine.backend import Backend, Capability
from gateway.errors import (
    Conflict,
    GatewayError,
    InsufficientCredits,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    Unavailable,
)
from gateway.jobs import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Job,
    JobState,
    JobStore,
    NewJob,
    QueueFull,
)

if TYPE_CHECKING:
    from gateway.gateway import Gateway

KIND = "distillation"
KINDS = frozenset({KIND})


class Budget(msgspec.Struct, kw_only=True):
    budget: float | None
    spent: float
    reserved: float
    """What the tenant's unfinished jobs may still spend (their estimates, less their cost)."""

    @property
    def balance(self) -> float | None:
        return None if self.budget is None else self.budget - self.spent - self.reserved


class Plan(msgspec.Struct, kw_only=True):
    """A checked submission: the job's stored config and data, and its cost estimate."""

    config: dict[str, Any]
    data: dict[str, Any]
    student: str
    estimate: CostEstimate
    budget: Budget


def invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_config")


class DistillationService:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.settings = gateway.settings.distillation
        self.rewards = collect_rewards(gateway.pm)
        self._submitting = asyncio.Lock()
        """Held from a tenant's budget check to its job's storing: two submissions at once
        cannot both spend what is left."""

    @property
    def jobs(self) -> JobStore:
        """The training service's store: one database and one set of workers for both."""
        return self.gateway.training.jobs

    # Planning.

    async def plan(self, request: DistillationRequest) -> Plan:
        config = request.config
        student = self._student(config)
        teacher = self._served(config.teacher_model, "config.teacher_model", "teacher")
        judge: Backend | None = None
        judge_name: str | None = None
        if config.reward:
            self._reward(config.reward)
        else:
            judge_name = config.judge_model or config.teacher_model
            judge = self._served(judge_name, "config.judge_model", "judge")
        prompts = await asyncio.to_thread(self._prompts, config)
        if len(prompts) < 2:
            raise invalid(
                f"A distillation job needs at least 2 prompts; {sources.describe_sources(config)}"
                f" gave {len(prompts)}.",
                "config.prompts",
            )
        # The split depends on the prompts (and the seed), not on the job: an estimate
        # plans the very split its job will make.
        digest = hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()
        order = random.Random(config.seed if config.seed is not None else digest)
        shuffled = list(prompts)
        order.shuffle(shuffled)
        held = held_out_count(len(shuffled), config.held_out)
        train, evaluate = shuffled[: len(shuffled) - held], shuffled[len(shuffled) - held :]
        types = [config.quantization] if config.quantization else list(config.quantization_types)
        source = self.gateway.models.handle(student).spec.source or None  # None: no files
        stored = msgspec.to_builtins(config)
        stored.update(
            student_model=student,
            base_model=student,
            judge_model=judge_name,
            quantization_types=[t.lower() for t in types],
            max_tokens=config.max_tokens or self.settings.sample_max_tokens,
            judge_max_tokens=self.settings.judge_max_tokens,
            concurrency=self.settings.concurrency,
            llama_quantize=self.settings.llama_quantize,
            student_source=source,
            prompts=None,
        )
        stored.pop("quantization", None)
        trainer = self.gateway.training.trainers.get(KIND)
        if trainer is None:
            raise Unavailable(
                "No `distillation` trainer is installed (it comes with `gateway-trainers`).",
                code="training_error",
            )
        data = {"train": train, "eval": evaluate}
        try:
            trainer.check(data, stored)
        except InvalidRequest as exc:  # OpenTracy's code and the field's path in the body
            param = exc.param or "config"
            raise invalid(
                exc.message, param if param.startswith("config") else f"config.{param}"
            ) from None
        cost = estimate(
            train + evaluate,
            n_samples=config.n_samples,
            max_tokens=stored["max_tokens"],
            judge_max_tokens=self.settings.judge_max_tokens,
            training_steps=config.training_steps,
            batch_size=config.batch_size,
            bond_beta=config.bond_beta,
            held_out=config.held_out,
            prices=Prices(
                teacher=teacher.prices(), judge=None if judge is None else judge.prices()
            ),
            uses_judge=judge is not None,
        )
        budget = await self.budget(request.tenant_id)
        return Plan(config=stored, data=data, student=student, estimate=cost, budget=budget)

    def _student(self, config: DistillationConfig) -> str:
        requested = config.student_model or config.base_model
        try:
            return adapter_model(
                self.gateway,
                requested,
                refusal="cannot be a student: its backend does not train LoRA adapters",
                code="invalid_config",
            )
        except ModelNotFound as exc:
            raise invalid(
                exc.message.replace("The model", "The student model"), "config.student_model"
            ) from None
        except GatewayError as exc:
            raise invalid(exc.message, "config.student_model") from None

    def _served(self, name: str, param: str, role: str) -> Backend:
        try:
            handle = self.gateway.models.handle(name)
        except ModelNotFound as exc:
            raise invalid(exc.message.replace("The model", f"The {role} model"), param) from None
        if not {Capability.CHAT, Capability.GENERATE} & handle.backend.capabilities:
            raise invalid(f"The {role} model `{name}` does not generate text.", param)
        return handle.backend

    def _reward(self, name: str) -> None:
        rewards = self.rewards
        if name not in rewards:
            known = ", ".join(f"`{n}`" for n in sorted(rewards)) or "none installed"
            raise invalid(
                f"There is no reward plugin `{name}` (rewards: {known}).", "config.reward"
            )

    def _prompts(self, config: DistillationConfig) -> list[list[dict[str, str]]]:
        data_dir = self.gateway.settings.data_path()
        if config.dataset_id:
            found = sources.from_dataset(data_dir, config.dataset_id)
        elif config.prompts:
            found = sources.from_inline(config.prompts)
        else:
            found = self._recorded(config)
        return sources.choose(found, config.num_prompts)

    def _recorded(self, config: DistillationConfig) -> list[list[dict[str, str]]]:
        recording = self.gateway.settings.recording
        if not recording.enabled and config.recorded is None:
            raise invalid(
                "No prompts: give `prompts` or `dataset_id`, or turn on `[recording]` to "
                "distill from the gateway's own traffic.",
                "config.prompts",
            )
        selection = config.recorded
        rows = self.gateway.recording.select(
            model=selection.model if selection else None,
            since=selection.since if selection else None,
            until=selection.until if selection else None,
            limit=config.num_prompts,
        )
        found: list[list[dict[str, str]]] = []
        for row in rows:
            if row.messages:
                found.append(sources.from_messages(row.messages, "A recorded prompt"))
            elif row.prompt:
                found.append([{"role": "user", "content": row.prompt}])
        return found

    async def budget(self, tenant: str) -> Budget:
        limit = self.settings.tenants.get(tenant)
        budget = limit.budget if limit is not None else self.settings.default_budget
        jobs = await asyncio.to_thread(self.jobs.find, kinds=KINDS, tenant=tenant)
        spent = sum(job.cost for job in jobs)
        reserved = sum(
            max(float(job.info.get("estimated_cost", 0.0)) - job.cost, 0.0)
            for job in jobs
            if job.state in ACTIVE_STATES
        )
        return Budget(budget=budget, spent=round(spent, 6), reserved=round(reserved, 6))

    # Submitting.

    async def submit(self, request: DistillationRequest) -> Job:
        job_id = f"job_{uuid.uuid4().hex[:12]}"
        plan = await self.plan(request)
        output = check_name(
            request.config.output_name or f"distill-{job_id.removeprefix('job_')[:8]}",
            "config.output_name",
        )
        now = time.time()
        info = {
            "name": request.name,
            "description": request.description,
            "phase": "initializing",
            "progress": {},
            "results": {},
            "artifacts": {},
            "estimated_cost": plan.estimate.cost,
            "updated_at": now,
        }
        new = NewJob(
            id=job_id,
            kind=KIND,
            model=plan.student,
            output_name=output,
            config=plan.config,
            data=plan.data,
            tenant=request.tenant_id,
            info=info,
        )
        training = self.gateway.training
        async with self._submitting:
            budget = await self.budget(request.tenant_id)  # as it is now, not at planning
            balance = budget.balance
            if balance is not None and plan.estimate.cost > balance:
                raise InsufficientCredits(
                    f"The job's estimated cost ${plan.estimate.cost:.4f} exceeds what tenant "
                    f"`{request.tenant_id}` has left (${max(balance, 0):.4f} of "
                    f"${budget.budget:.4f}).",
                    code="insufficient_credits",
                )
            try:
                job = await asyncio.to_thread(
                    self.jobs.submit, new, max_queued=training.settings.max_queued_jobs
                )
            except QueueFull:
                raise Unavailable(
                    f"The job queue is full ({training.settings.max_queued_jobs} jobs); retry "
                    "when a job has finished.",
                    code="queue_full",
                ) from None
        await training.supervisor.ensure(self.gateway.models.handle(plan.student).spec)
        return job

    # Reading.

    async def get(self, job_id: str, tenant: str | None) -> Job:
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job is None or job.kind != KIND or (tenant is not None and job.tenant != tenant):
            raise NotFound(f"Distillation job `{job_id}` was not found.", code="job_not_found")
        return job

    async def find(self, tenant: str | None, state: JobState | None) -> list[Job]:
        """The tenant's jobs (every tenant's when None), newest first."""
        jobs = await asyncio.to_thread(
            self.jobs.find,
            kinds=KINDS,
            tenant=tenant,
            states=None if state is None else frozenset({state}),
        )
        return jobs[::-1]

    async def logs(self, job_id: str, tenant: str | None) -> list[str]:
        await self.get(job_id, tenant)
        lines = await asyncio.to_thread(self.jobs.logs, job_id)
        return [
            f"[{time.strftime('%H:%M:%S', time.gmtime(line.time))}] {line.message}"
            for line in lines
        ]

    # Cancelling.

    async def cancel(self, job_id: str, tenant: str | None) -> Job:
        """Cancel a job in any phase: a queued one at once, a running one at its next
        step (what it has written so far stays). A finished job is a 409."""
        job = await self.get(job_id, tenant)
        if job.state in TERMINAL_STATES:
            raise Conflict(
                f"Distillation job `{job_id}` is already {job.state.value}; it cannot be "
                "cancelled.",
                code="job_already_running",
            )
        if job.state == JobState.QUEUED:
            cancelled = await asyncio.to_thread(self.jobs.cancel_queued, job_id)
            if cancelled is not None:
                return cancelled
        stopping = await asyncio.to_thread(self.jobs.request_stop, job_id)
        return stopping or await self.get(job_id, tenant)
