"""The distillation routes, OpenTracy's `/v1/distillation*`, over HTTP to an in-process app
of echo models: a student that takes adapters, local (unpriced) and priced teachers and
judges. No job runs (`jobs_per_model = 0`: no worker starts, jobs stay pending): these are
the routes' shapes, defaults, refusals, estimates and budgets. A job's later states are
written into the job store directly, as the worker running it writes them.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from gateway_trainers.distill.trainer import DistillationTrainer
from litestar.testing import TestClient

from gateway import hookimpl
from gateway.app import create_app
from gateway.distillation.service import KINDS
from gateway.engine import Capability, ModelSpec
from gateway.gateway import Gateway
from gateway.jobs import JobState, NewJob
from gateway.plugins import make_plugin_manager
from gateway.settings import (
    ApiKey,
    DistillationSettings,
    RecordingSettings,
    Settings,
    TenantSettings,
    TrainingSettings,
)
from gateway.testing.echo import EchoBackend
from gateway.training.trainer import Trainer

TEACHER_PRICES = (1e-6, 2e-6)
JUDGE_PRICES = (3e-6, 4e-6)
DEFAULT_BUDGET = 1000.0
CAPPED_BUDGET = 0.05
PROMPTS = ["What is 2 + 2?", "Name a color.", "Say hello."]
JOB_FIELDS = {
    "id",
    "name",
    "description",
    "tenant_id",
    "status",
    "phase",
    "config",
    "progress",
    "results",
    "artifacts",
    "error",
    "cost_accrued",
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "phases",  # ours: the timeline of `phase`
}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SEED_CREATE = {
    "tenant_id": "default",
    "name": "ticket-triage v1",
    "description": "distill GPT-4o onto a 1B llama for support tickets",
    "config": {
        "teacher_model": "openai/gpt-4o",
        "student_model": "llama-3.2-1b",
        "num_prompts": 500,
        "n_samples": 4,
        "training_steps": 100,
        "bond_beta": 0.5,
        "bond_gamma": 0.1,
        "temperature": 0.8,
        "export_gguf": True,
        "quantization_types": ["q4_k_m", "q8_0"],
    },
}
"""The create example of OpenTracy's REST reference, as written there."""


class Priced(EchoBackend):
    """An echo model with a price per token (what a teacher proxy reports)."""

    def prices(self) -> tuple[float, float] | None:
        return (float(self.spec.options["input"]), float(self.spec.options["output"]))


class EmbedOnly(EchoBackend):
    """A served model that does not generate text."""

    capabilities = frozenset({Capability.EMBED})


class DistillPlugin:
    """The `distillation` trainer (entry points are not loaded here) and the test backends."""

    def __init__(self, trainer: bool = True):
        self.trainer = trainer

    @hookimpl
    def register_trainers(self, register: Callable[[Trainer], None]) -> None:
        if self.trainer:
            register(DistillationTrainer())

    @hookimpl
    def register_backends(self, register: Callable[[str, Any], None]) -> None:
        register("priced", lambda spec, data_dir: Priced(spec, data_dir))
        register("embed-only", lambda spec, data_dir: EmbedOnly(spec, data_dir))


def priced(name: str, prices: tuple[float, float]) -> ModelSpec:
    return ModelSpec(name=name, backend="priced", options={"input": prices[0], "output": prices[1]})


def student(name: str) -> ModelSpec:
    return ModelSpec(name=name, backend="echo", options={"adapters": True})


@contextmanager
def serve(folder: Path, *, trainer: bool = True, **settings: Any) -> Iterator[Served]:
    settings.setdefault("training", TrainingSettings(jobs_per_model=0))
    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""})
    pm.register(DistillPlugin(trainer), name="distill-test-plugin")
    gateway = Gateway(Settings(data_dir=str(folder), **settings), pm)
    with TestClient(create_app(gateway=gateway)) as client:
        yield Served(gateway, client, folder)


class Served(NamedTuple):
    gateway: Gateway
    client: TestClient
    folder: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("distillation")
    (folder / "datasets").mkdir()
    models = [
        student("student"),
        student("worker-student"),
        ModelSpec(name="echo", backend="echo"),
        ModelSpec(name="embedder", backend="embed-only"),
        priced("teacher", TEACHER_PRICES),
        priced("judge", JUDGE_PRICES),
    ]
    distillation = DistillationSettings(
        default_budget=DEFAULT_BUDGET,
        tenants={
            "capped": TenantSettings(budget=CAPPED_BUDGET),
            "pair": TenantSettings(budget=CAPPED_BUDGET),
            "broke": TenantSettings(budget=0),
        },
    )
    with serve(folder, models=models, distillation=distillation) as app:
        yield app


@pytest.fixture
def client(served: Served) -> TestClient:
    return served.client


def body(tenant: str | None = None, name: str = "demo", **config: Any) -> dict[str, Any]:
    """A create body: the local `echo` teacher (no cost), the `student`, inline prompts."""
    request: dict[str, Any] = {
        "name": name,
        "config": {"teacher_model": "echo", "student_model": "student", "prompts": PROMPTS}
        | config,
    }
    if tenant is not None:
        request["tenant_id"] = tenant
    return request


def created(client: TestClient, request: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/distillation", json=request)
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: Any, status: int, code: str, *words: str) -> dict[str, Any]:
    """The family's error shape: `{"error": {"code", "message", "type", "param"}}`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], error
    return error


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def stored_prompts(served: Served, job_id: str) -> list[list[dict[str, str]]]:
    job = served.gateway.training.jobs.get(job_id, with_data=True)
    assert job is not None
    return job.data["train"] + job.data["eval"]


# Create.


def test_create_answers_opentracys_job_and_stores_the_defaults(served: Served, client):
    request = body(tenant="shapes", name="ticket-triage v1") | {"description": "a demo"}
    job = created(client, request)
    assert set(job) == JOB_FIELDS
    assert job["id"].startswith("job_")
    assert (job["name"], job["description"], job["tenant_id"]) == (
        "ticket-triage v1",
        "a demo",
        "shapes",
    )
    assert (job["status"], job["phase"]) == ("pending", "initializing")
    assert (job["progress"], job["results"], job["artifacts"]) == ({}, {}, {})
    assert job["cost_accrued"] == 0.0 and isinstance(job["cost_accrued"], float)
    assert job["error"] is None
    assert ISO.match(job["created_at"]) and ISO.match(job["updated_at"]), job
    assert job["updated_at"] >= job["created_at"]
    assert job["started_at"] is None and job["completed_at"] is None
    config = job["config"]
    defaults = {
        "teacher_model": "echo",
        "student_model": "student",
        "base_model": "student",
        "judge_model": "echo",  # the teacher judges when no judge is named
        "num_prompts": 1000,
        "n_samples": 4,
        "training_steps": 500,
        "bond_beta": 0.5,
        "bond_gamma": 0.1,
        "temperature": 0.8,
        "export_gguf": True,
        "quantization_types": ["q8_0"],
        "held_out": 0.1,
        "max_tokens": DistillationSettings().sample_max_tokens,
        "judge_max_tokens": DistillationSettings().judge_max_tokens,
        "reward": None,
        "dataset_id": None,
    }
    assert {key: config.get(key) for key in defaults} == defaults
    assert "prompts" not in config and "llama_quantize" not in config
    assert "quantization" not in config

    stored = served.gateway.training.jobs.get(job["id"], with_data=True)
    assert stored is not None
    assert (stored.kind, stored.model, stored.tenant, stored.state) == (
        "distillation",
        "student",
        "shapes",
        JobState.QUEUED,
    )
    assert stored.config["n_samples"] == 4 and stored.config["prompts"] is None
    # Three prompts: one held out to measure the student before and after, two to train.
    assert (len(stored.data["train"]), len(stored.data["eval"])) == (2, 1)
    assert sorted(map(json.dumps, stored_prompts(served, job["id"]))) == sorted(
        json.dumps(user(text)) for text in PROMPTS
    )
    assert stored.info["estimated_cost"] == 0.0  # a local teacher costs nothing

    again = client.get(f"/v1/distillation/{job['id']}", params={"tenant_id": "shapes"})
    assert again.status_code == 200, again.text
    assert again.json() == job


def test_nulls_mean_the_default_and_unknown_fields_are_ignored(client):
    request = {
        "tenant_id": None,
        "name": None,
        "description": None,
        "priority": "high",
        "config": {
            "teacher_model": "echo",
            "student_model": "student",
            "prompts": PROMPTS,
            "n_samples": None,
            "bond_beta": None,
            "training_steps": None,
            "quantization_types": None,
            "output_name": None,
            "curation_agents": ["critic"],
            "gpu": {"count": 2},
        },
    }
    job = created(client, request)
    assert (job["tenant_id"], job["name"], job["description"]) == ("default", "", "")
    config = job["config"]
    assert (config["n_samples"], config["bond_beta"], config["training_steps"]) == (4, 0.5, 500)
    assert config["quantization_types"] == ["q8_0"]
    assert "curation_agents" not in config and "gpu" not in config
    assert created(client, {"config": None} | body())["config"]["n_samples"] == 4


def test_an_empty_tenant_is_refused(client):
    error = refused(client.post("/v1/distillation", json=body(tenant="")), 400, "invalid_config")
    assert error["param"] == "tenant_id"


def test_num_prompts_caps_the_prompts_used(served: Served, client):
    many = [f"Question number {i}?" for i in range(12)]
    job = created(client, body(prompts=many, num_prompts=10))
    assert sorted(map(json.dumps, stored_prompts(served, job["id"]))) == sorted(
        json.dumps(user(text)) for text in many[:10]
    )


def test_a_single_quantization_is_a_one_type_list_in_lower_case(client):
    assert created(client, body(quantization="F16"))["config"]["quantization_types"] == ["f16"]
    job = created(client, body(export_gguf=False, quantization_types=["q4_k_m"]))
    assert job["config"]["export_gguf"] is False  # no export: no type is checked


INVALID = [
    ({"teacher_model": "nope/gpt"}, "config.teacher_model", ["teacher", "`nope/gpt`"]),
    ({"teacher_model": "embedder"}, "config.teacher_model", ["`embedder`", "generate"]),
    ({"judge_model": "nope-judge"}, "config.judge_model", ["judge", "`nope-judge`"]),
    ({"student_model": "echo"}, "config.student_model", ["`echo`", "student"]),
    ({"student_model": "nope-1b"}, "config.student_model", ["student", "`nope-1b`"]),
    ({"student_model": None, "base_model": "echo"}, "config.student_model", ["`echo`"]),
    ({"n_samples": 1}, "config.n_samples", ["config.n_samples", ">= 2"]),
    ({"n_samples": 17}, "config.n_samples", ["config.n_samples", "<= 16"]),
    ({"n_samples": "four"}, "config.n_samples", ["config.n_samples"]),
    ({"temperature": 3}, "config.temperature", ["config.temperature", "<= 2.0"]),
    ({"training_steps": 5}, "config.training_steps", ["config.training_steps", ">= 10"]),
    ({"bond_beta": 1.5}, "config.bond_beta", ["config.bond_beta", "<= 1.0"]),
    ({"num_prompts": 5}, "config.num_prompts", ["config.num_prompts"]),
    ({"quantization_types": ["q4_k_m"]}, "config.quantization_types", ["`q4_k_m`"]),
    ({"quantization_types": ["q8_0", "q9_z"]}, "config.quantization_types", ["`q9_z`"]),
    ({"quantization": "q4_k_m"}, "config.quantization_types", ["`q4_k_m`", "llama-quantize"]),
    ({"prompts": ["only one"]}, "config.prompts", ["at least 2 prompts", "gave 1"]),
    ({"prompts": ["same", "same"]}, "config.prompts", ["at least 2 prompts", "gave 1"]),
    ({"prompts": ["ok", "  "]}, "config.prompts[1]", ["empty"]),
    (
        {"prompts": [{"messages": [{"role": "assistant", "content": "Hi"}]}, "b"]},
        "config.prompts",
        ["no user message"],
    ),
    ({"reward": "nope-reward"}, "config.reward", ["`nope-reward`"]),
    ({"recorded": {"model": "student", "colour": "red"}}, "config.recorded", ["colour"]),
]


@pytest.mark.parametrize("path", ["/v1/distillation", "/v1/distillation/estimate"])
@pytest.mark.parametrize(("config", "param", "words"), INVALID)
def test_invalid_configs_are_400_invalid_config_naming_the_field(
    served: Served, client, path: str, config: dict[str, Any], param: str, words: list[str]
):
    error = refused(
        client.post(path, json=body(tenant="refusals", **config)), 400, "invalid_config"
    )
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error
    listed = client.get("/v1/distillation", params={"tenant_id": "refusals"}).json()
    assert listed["total"] == 0  # nothing was stored


def test_a_body_that_is_not_an_object_is_400_invalid_config(client):
    refused(client.post("/v1/distillation", json=["a"]), 400, "invalid_config")
    broken = client.post(
        "/v1/distillation", content=b'{"config": ', headers={"Content-Type": "application/json"}
    )
    refused(broken, 400, "invalid_config")
    refused(client.post("/v1/distillation", json={"config": "x"}), 400, "invalid_config", "config")


def test_without_a_prompt_source_and_recording_off_the_job_is_refused(client):
    request = body()
    del request["config"]["prompts"]
    error = refused(client.post("/v1/distillation", json=request), 400, "invalid_config")
    assert error["param"] == "config.prompts"
    assert "`prompts`" in error["message"] and "`dataset_id`" in error["message"]
    assert "[recording]" in error["message"]


def test_inline_prompts_may_be_conversations(served: Served, client):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},  # an answer after the last user turn
    ]
    job = created(client, body(prompts=[{"messages": conversation}, "Say hello."], held_out=0))
    assert sorted(map(json.dumps, stored_prompts(served, job["id"]))) == sorted(
        [json.dumps(conversation[:2]), json.dumps(user("Say hello."))]
    )
    refused(
        client.post("/v1/distillation", json=body(prompts=[{"messages": [{"role": "user"}]}, "a"])),
        400,
        "invalid_config",
        "config.prompts",
    )


# Datasets.


def test_a_dataset_file_in_the_datasets_folder_gives_the_prompts(served: Served, client):
    rows = [
        {"prompt": "First question?"},
        {
            "messages": [
                {"role": "user", "content": "Second?"},
                {"role": "assistant", "content": "2"},
            ]
        },
        {"text": "Third."},
        {"prompt": "First question?"},  # a duplicate, dropped
    ]
    (served.folder / "datasets" / "rows.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows)
    )
    # A dataset comes before inline prompts (OpenTracy's order).
    job = created(client, body(dataset_id="rows.jsonl", prompts=["ignored", "also ignored"]))
    assert job["config"]["dataset_id"] == "rows.jsonl"
    assert sorted(map(json.dumps, stored_prompts(served, job["id"]))) == sorted(
        json.dumps(user(text)) for text in ("First question?", "Second?", "Third.")
    )
    estimate = client.post("/v1/distillation/estimate", json=body(dataset_id="rows.jsonl"))
    assert estimate.status_code == 200, estimate.text
    assert estimate.json()["prompts"] == 3


def test_a_dataset_missing_or_outside_the_datasets_folder_is_refused(served: Served, client):
    (served.folder / "outside.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    (served.folder / "datasets" / "notes.txt").write_text("a\nb\n")
    (served.folder / "datasets" / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt":\n')
    cases = {
        "missing.jsonl": ["no dataset `missing.jsonl`"],
        "../outside.jsonl": ["Refused dataset `../outside.jsonl`"],
        str(served.folder / "outside.jsonl"): ["no absolute paths"],
        "notes.txt": ["`.jsonl`"],
        "broken.jsonl": ["not valid JSON"],
    }
    for name, words in cases.items():
        response = client.post("/v1/distillation", json=body(dataset_id=name))
        error = refused(response, 400, "invalid_config", *words)
        assert error["param"] == "config.dataset_id", error


# Estimates and budgets.


def documented_estimate(
    prompts: list[str],
    *,
    eval_count: int,
    n_samples: int,
    max_tokens: int,
    judge_max_tokens: int,
    steps: int,
    batch_size: int,
    teacher: tuple[float, float],
    judge: tuple[float, float],
) -> dict[str, float]:
    """The estimate as `gateway.distillation.estimate` documents it, worked out for
    single-message prompts of equal length: a prompt counts len // 4 + 4 tokens, the judge
    reads 200 tokens of instructions with the mean prompt and the answer, every answer is
    as long as it may be, the BOND backward term samples 128-token student answers."""
    tokens = len(prompts[0]) // 4 + 4
    assert all(len(p) // 4 + 4 == tokens for p in prompts)
    train = len(prompts) - eval_count
    judge_in = 200 + tokens
    samples = train * n_samples
    policy = steps * batch_size

    def cost(price: tuple[float, float], inputs: int, outputs: int) -> float:
        return inputs * price[0] + outputs * price[1]

    return {
        "data_generation": cost(
            teacher, samples * tokens + eval_count * tokens, (samples + eval_count) * max_tokens
        ),
        "curation": cost(judge, samples * (judge_in + max_tokens), samples * judge_max_tokens),
        "training": cost(judge, policy * (judge_in + 128), policy * judge_max_tokens),
        "evaluation": cost(
            judge, 2 * eval_count * (judge_in + max_tokens), 2 * eval_count * judge_max_tokens
        ),
    }


SMALL_PROMPTS = ["Question 1?", "Question 2?", "Question 3?", "Question 4?"]
SMALL: dict[str, Any] = {
    "teacher_model": "teacher",
    "judge_model": "judge",
    "prompts": SMALL_PROMPTS,
    "n_samples": 2,
    "training_steps": 10,
    "batch_size": 1,
    "max_tokens": 50,
}
"""A small priced job: four prompts (one held out), two samples each, ten BOND steps."""


def small_cost() -> tuple[dict[str, float], float]:
    phases = documented_estimate(
        SMALL_PROMPTS,
        eval_count=1,
        n_samples=2,
        max_tokens=50,
        judge_max_tokens=DistillationSettings().judge_max_tokens,
        steps=10,
        batch_size=1,
        teacher=TEACHER_PRICES,
        judge=JUDGE_PRICES,
    )
    return phases, sum(phases.values())


def test_a_priced_estimate_is_the_documented_sum(client):
    response = client.post("/v1/distillation/estimate", json=body(**SMALL))
    assert response.status_code == 200, response.text
    estimate = response.json()
    phases, total = small_cost()
    assert estimate["breakdown"] == pytest.approx(phases, abs=1e-6)
    assert estimate["estimated_cost"] == pytest.approx(total, abs=1e-6)
    assert estimate["estimated_cost"] == pytest.approx(0.035338, abs=1e-6)  # by hand
    assert estimate["priced"] is True and estimate["currency"] == "USD"
    assert estimate["prompts"] == 4
    assert estimate["tokens"]["input"] > 0 and estimate["tokens"]["output"] > 0
    assert (estimate["tenant_id"], estimate["budget"]) == ("default", DEFAULT_BUDGET)
    assert estimate["sufficient"] is True

    # bond_beta 0 is SFT on the curated samples: no judge calls while training.
    sft = client.post("/v1/distillation/estimate", json=body(**SMALL, bond_beta=0)).json()
    assert sft["breakdown"]["training"] == 0.0
    assert sft["estimated_cost"] == pytest.approx(total - phases["training"], abs=1e-6)


def test_an_unpriced_teacher_is_estimated_at_zero_and_says_so(client):
    local = client.post("/v1/distillation/estimate", json=body()).json()
    assert (local["estimated_cost"], local["priced"]) == (0.0, False)
    assert set(local["breakdown"].values()) == {0.0}
    assert local["tokens"]["output"] > 0  # the calls are counted, not priced
    mixed = client.post(
        "/v1/distillation/estimate", json=body(**SMALL | {"judge_model": "echo"})
    ).json()
    phases, _ = small_cost()
    assert mixed["priced"] is False
    assert mixed["estimated_cost"] == pytest.approx(phases["data_generation"], abs=1e-6)


def test_a_tenants_budget_counts_the_reserved_estimates_of_its_jobs(served: Served, client):
    _, cost = small_cost()
    assert cost < CAPPED_BUDGET < 2 * cost

    def estimate() -> dict[str, Any]:
        response = client.post("/v1/distillation/estimate", json=body("capped", **SMALL))
        assert response.status_code == 200, response.text
        return response.json()

    fresh = estimate()
    assert (fresh["tenant_id"], fresh["budget"], fresh["spent"]) == ("capped", CAPPED_BUDGET, 0.0)
    assert fresh["balance"] == pytest.approx(CAPPED_BUDGET)
    assert fresh["sufficient"] is True

    first = created(client, body("capped", **SMALL | {"student_model": "worker-student"}))
    after = estimate()
    assert after["balance"] == pytest.approx(CAPPED_BUDGET - cost, abs=1e-6)
    assert after["sufficient"] is False
    error = refused(
        client.post("/v1/distillation", json=body("capped", **SMALL)),
        402,
        "insufficient_credits",
        "`capped`",
    )
    assert f"{cost:.4f}" in error["message"]
    # Another tenant's jobs do not count; an unpriced job fits any budget.
    created(client, body(**SMALL))
    created(client, body("capped"))
    created(client, body("broke"))
    refused(
        client.post("/v1/distillation", json=body("broke", **SMALL)), 402, "insufficient_credits"
    )

    # What a running job has spent counts as spent; a cancelled job reserves nothing more.
    jobs = served.gateway.training.jobs
    claim(served, first["id"])
    assert jobs.update(first["id"], {"phase": "data_generation"}, add_cost=0.01)
    assert estimate()["spent"] == pytest.approx(0.01)
    stopping = client.post(f"/v1/distillation/{first['id']}/cancel", params={"tenant_id": "capped"})
    assert stopping.status_code == 200, stopping.text
    finished = jobs.finish(first["id"], JobState.CANCELLED, error="Cancelled by request.")
    assert finished is not None
    spent = estimate()
    assert spent["spent"] == pytest.approx(0.01)
    assert spent["balance"] == pytest.approx(CAPPED_BUDGET - 0.01)
    created(client, body("capped", **SMALL))


def claim(served: Served, job_id: str) -> None:
    """Move `job_id` to running, as a worker of its student does (it must be the student's
    oldest queued job: the `worker-student` model has no other)."""
    jobs = served.gateway.training.jobs
    job = jobs.get(job_id)
    assert job is not None
    claimed = jobs.claim(job.model, "test-worker", KINDS)
    assert claimed is not None and claimed.id == job_id


def test_two_jobs_submitted_at_once_cannot_both_spend_the_balance(
    served: Served, client, monkeypatch: pytest.MonkeyPatch
):
    """Each fits the budget alone, not both: one is created, the other is a 402, even when
    both read the budget before either is stored (the budget is read slowly here)."""
    service = served.gateway.distillation
    read = service.budget

    async def slow_budget(tenant: str) -> Any:
        await asyncio.sleep(0.2)  # lets the other submission reach its budget check
        return await read(tenant)

    monkeypatch.setattr(service, "budget", slow_budget)
    with ThreadPoolExecutor(2) as pool:
        responses = list(
            pool.map(lambda _: client.post("/v1/distillation", json=body("pair", **SMALL)), [0, 1])
        )
    assert sorted(r.status_code for r in responses) == [200, 402], [r.text for r in responses]
    listed = client.get("/v1/distillation", params={"tenant_id": "pair"}).json()
    assert listed["total"] == 1


def test_default_budget_applies_to_tenants_not_listed(client):
    estimate = client.post("/v1/distillation/estimate", json=body("unlisted")).json()
    assert (estimate["budget"], estimate["balance"]) == (DEFAULT_BUDGET, DEFAULT_BUDGET)


# Reading and listing.


def test_a_job_is_read_only_by_its_tenant(served: Served, client):
    job = created(client, body("acme"))
    path = f"/v1/distillation/{job['id']}"
    assert client.get(path, params={"tenant_id": "acme"}).json()["id"] == job["id"]
    for params in ({"tenant_id": "other"}, {}):  # no tenant_id is tenant `default`
        refused(client.get(path, params=params), 404, "job_not_found", job["id"])
    refused(client.get("/v1/distillation/job_nope"), 404, "job_not_found", "job_nope")
    # A training job of the same store is not a distillation job.
    training = served.gateway.training.jobs.submit(
        NewJob(kind="sft", model="student", output_name="not-distilled")
    )
    refused(client.get(f"/v1/distillation/{training.id}"), 404, "job_not_found")
    served.gateway.training.jobs.cancel_queued(training.id)


def test_list_filters_pages_and_orders_newest_first(client):
    ids = [created(client, body("lister", name=f"job {i}"))["id"] for i in range(3)]
    listed = client.get("/v1/distillation", params={"tenant_id": "lister"}).json()
    assert set(listed) == {"jobs", "total", "has_more"}
    assert [job["id"] for job in listed["jobs"]] == ids[::-1]
    assert (listed["total"], listed["has_more"]) == (3, False)
    assert all(set(job) == JOB_FIELDS for job in listed["jobs"])

    def page(**params: Any) -> dict[str, Any]:
        response = client.get("/v1/distillation", params={"tenant_id": "lister"} | params)
        assert response.status_code == 200, response.text
        return response.json()

    first = page(limit=2)
    assert ([j["id"] for j in first["jobs"]], first["total"], first["has_more"]) == (
        ids[:0:-1],
        3,
        True,
    )
    rest = page(limit=2, offset=2)
    assert ([j["id"] for j in rest["jobs"]], rest["total"], rest["has_more"]) == (
        [ids[0]],
        3,
        False,
    )
    assert page(offset=3) == {"jobs": [], "total": 3, "has_more": False}
    assert page(limit=100)["total"] == 3

    cancelled = client.post(f"/v1/distillation/{ids[1]}/cancel", params={"tenant_id": "lister"})
    assert cancelled.json()["status"] == "cancelled"
    pending = page(status="pending")
    assert ([j["id"] for j in pending["jobs"]], pending["total"]) == ([ids[2], ids[0]], 2)
    assert [j["id"] for j in page(status="cancelled")["jobs"]] == [ids[1]]
    assert page(status="completed") == {"jobs": [], "total": 0, "has_more": False}

    others = client.get("/v1/distillation").json()["jobs"]  # tenant `default`
    assert not {job["id"] for job in others} & set(ids)
    assert all(job["tenant_id"] == "default" for job in others)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 101}, "limit"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"status": "queued"}, "status"),  # the store's name, not OpenTracy's
        ({"status": "bogus"}, "status"),
        ({"limit": "many"}, "limit"),
    ],
)
def test_bad_list_parameters_are_400_invalid_config(client, params: dict[str, Any], param: str):
    error = refused(client.get("/v1/distillation", params=params), 400, "invalid_config")
    assert param in (error["param"] or "") + error["message"], error


# Cancelling, logs, artifacts.


def test_cancel_a_pending_job_then_again_is_409(client):
    job = created(client, body("canceller"))
    path = f"/v1/distillation/{job['id']}/cancel"
    refused(client.post(path), 404, "job_not_found")  # another tenant's job
    assert (
        client.get(f"/v1/distillation/{job['id']}", params={"tenant_id": "canceller"}).json()[
            "status"
        ]
        == "pending"
    )
    cancelled = client.post(path, params={"tenant_id": "canceller"})
    assert cancelled.status_code == 200, cancelled.text
    view = cancelled.json()
    assert set(view) == JOB_FIELDS
    assert view["status"] == "cancelled" and view["error"]
    assert ISO.match(view["completed_at"])
    refused(
        client.post(path, params={"tenant_id": "canceller"}),
        409,
        "job_already_running",
        "already cancelled",
    )
    refused(client.post("/v1/distillation/job_nope/cancel"), 404, "job_not_found")


def test_a_running_job_shows_what_its_worker_writes(served: Served, client):
    """The worker's writes (phase, progress, cost, artifacts, logs) through the routes; a
    cancel stops it at its next step; a finished job cannot be cancelled."""
    request = body("runner", student_model="worker-student")
    job = created(client, request)
    path = f"/v1/distillation/{job['id']}"
    tenant = {"tenant_id": "runner"}
    artifacts = client.get(f"{path}/artifacts", params=tenant)
    assert artifacts.status_code == 200, artifacts.text
    assert artifacts.json() == {
        "adapter_path": None,
        "gguf_paths": {},
        "tokenizer_path": None,
        "config_path": None,
        "adapter_name": None,
        "merged_path": None,
        "files": {},
    }
    assert client.get(f"{path}/logs", params=tenant).json() == {"logs": []}

    jobs = served.gateway.training.jobs
    folder = served.folder / "distillation" / job["id"]
    claim(served, job["id"])
    progress = {"data_generation": {"status": "running", "progress": 50}}
    written = {
        "phase": "data_generation",
        "progress": progress,
        "artifacts": {
            "config_path": str(folder / "train_config.json"),
            "adapter_path": str(folder / "adapter"),
            "gguf_paths": {"q8_0": str(folder / "gguf" / "model-q8_0.gguf")},
        },
    }
    assert jobs.update(job["id"], written, add_cost=0.125)
    jobs.log(job["id"], "phase data_generation")
    view = client.get(path, params=tenant).json()
    assert (view["status"], view["phase"], view["progress"]) == (
        "running",
        "data_generation",
        progress,
    )
    assert view["cost_accrued"] == 0.125
    assert ISO.match(view["started_at"]) and view["completed_at"] is None
    running = client.get("/v1/distillation", params=tenant | {"status": "running"}).json()
    assert [j["id"] for j in running["jobs"]] == [job["id"]]
    shown = client.get(f"{path}/artifacts", params=tenant).json()
    assert shown["config_path"] == str(folder / "train_config.json")
    assert shown["adapter_path"] == str(folder / "adapter")
    assert shown["gguf_paths"] == {"q8_0": str(folder / "gguf" / "model-q8_0.gguf")}
    (line,) = client.get(f"{path}/logs", params=tenant).json()["logs"]
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] phase data_generation", line), line

    stopping = client.post(f"{path}/cancel", params=tenant)
    assert stopping.status_code == 200, stopping.text
    assert stopping.json()["status"] == "running"  # stops at its next step
    assert jobs.get(job["id"]).stop_requested  # type: ignore[union-attr]
    assert jobs.finish(job["id"], JobState.COMPLETED) is not None
    done = client.get(path, params=tenant).json()
    assert (done["status"], done["phase"]) == ("completed", "completed")
    assert ISO.match(done["completed_at"])
    refused(client.post(f"{path}/cancel", params=tenant), 409, "job_already_running")
    for sub in ("logs", "artifacts"):
        refused(client.get(f"{path}/{sub}"), 404, "job_not_found")  # tenant `default`
        refused(client.get(f"/v1/distillation/job_nope/{sub}"), 404, "job_not_found")


def test_an_unexpected_failure_is_500_training_error(
    served: Served, client, monkeypatch: pytest.MonkeyPatch
):
    async def crash(job_id: str, tenant: str | None) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(served.gateway.distillation, "get", crash)
    error = refused(client.get("/v1/distillation/job_x"), 500, "training_error")
    assert "disk on fire" not in error["message"]  # the server's details stay in its log


# Without the trainer, with API keys, and OpenTracy's own example.


def test_without_the_distillation_trainer_a_job_is_refused(tmp_path: Path):
    with serve(
        tmp_path, trainer=False, models=[student("student"), priced("t", TEACHER_PRICES)]
    ) as app:
        response = app.client.post("/v1/distillation", json=body(teacher_model="t"))
        refused(response, 503, "training_error", "`distillation` trainer")


def test_the_family_needs_the_train_scope(tmp_path: Path):
    keys = [
        ApiKey(key="train-key-1234567", name="trainer", scopes=["train"]),
        ApiKey(key="inference-key-123", name="app", scopes=["inference"]),
    ]
    models = [student("student"), ModelSpec(name="echo", backend="echo")]
    with serve(tmp_path, models=models, api_keys=keys) as app:
        calls = [
            ("POST", "/v1/distillation", body()),
            ("POST", "/v1/distillation/estimate", body()),
            ("GET", "/v1/distillation", None),
            ("GET", "/v1/distillation/job_x", None),
            ("POST", "/v1/distillation/job_x/cancel", None),
            ("GET", "/v1/distillation/job_x/logs", None),
            ("GET", "/v1/distillation/job_x/artifacts", None),
        ]
        for method, path, request in calls:

            def call(
                key: str | None,
                method: str = method,
                path: str = path,
                request: dict[str, Any] | None = request,
            ) -> Any:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                return app.client.request(method, path, headers=headers, json=request)

            refused(call(None), 401, "missing_api_key")
            refused(call("wrong-key-12345678"), 401, "invalid_api_key")
            refused(call("inference-key-123"), 403, "insufficient_scope")
            assert call("train-key-1234567").status_code in (200, 404), (method, path)
        job = app.client.post(
            "/v1/distillation",
            json=body(),
            headers={"Authorization": "Bearer train-key-1234567"},
        ).json()
        assert job["status"] == "pending"


def record_traffic(app: Served, texts: list[str]) -> None:
    for text in texts:
        response = app.client.post(
            "/v1/chat/completions",
            json={"model": "llama-3.2-1b", "messages": user(text), "max_tokens": 4},
        )
        assert response.status_code == 200, response.text
    app.gateway.recording.flush()


@pytest.mark.parametrize("llama_quantize", [False, True])
def test_opentracys_create_example(tmp_path: Path, llama_quantize: bool):
    """The reference's create body as written (its default types include `q4_k_m`), on a
    gateway serving its two models and recording its traffic (the prompt source when a
    body names none): refused naming `q4_k_m` without a llama-quantize binary, accepted
    with one."""
    models = [student("llama-3.2-1b"), priced("openai/gpt-4o", TEACHER_PRICES)]
    distillation = DistillationSettings(
        llama_quantize=str(tmp_path / "llama-quantize") if llama_quantize else None
    )
    settings: dict[str, Any] = {
        "models": models,
        "distillation": distillation,
        "recording": RecordingSettings(enabled=True),
    }
    with serve(tmp_path, **settings) as app:
        record_traffic(app, ["Ticket: printer jam.", "Ticket: login fails.", "Ticket: refund?"])
        response = app.client.post("/v1/distillation", json=SEED_CREATE)
        if not llama_quantize:
            error = refused(response, 400, "invalid_config", "`q4_k_m`", "llama-quantize")
            assert error["param"] == "config.quantization_types"
            assert "`q8_0`" not in error["message"].partition(".")[0]  # only q4_k_m refused
            return
        assert response.status_code == 200, response.text
        job = response.json()
        assert (job["name"], job["tenant_id"], job["status"]) == (
            "ticket-triage v1",
            "default",
            "pending",
        )
        assert job["config"]["quantization_types"] == ["q4_k_m", "q8_0"]
        assert "llama_quantize" not in job["config"]
        assert sorted(map(json.dumps, stored_prompts(app, job["id"]))) == sorted(
            json.dumps(user(t))
            for t in ("Ticket: printer jam.", "Ticket: login fails.", "Ticket: refund?")
        )
        stored = app.gateway.training.jobs.get(job["id"])
        assert stored is not None and stored.config["llama_quantize"] == str(
            tmp_path / "llama-quantize"
        )
