"""The training routes, Kiln's `/v1/train/*` and NPU-STACK's `/api/finetune/*`, over HTTP to
the app (in-process) serving the real SmolLM2, with API keys and a data directory of its
own. No job runs here (`jobs_per_model = 0`: no worker starts, jobs stay queued): these are
the routes' shapes, defaults and refusals. A job's later states are written into the job
store directly, as a worker writes them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from litestar.testing import TestClient
from seed_examples import Example, examples

from gateway import hookimpl
from gateway.app import create_app
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.jobs import JobState, StepMetrics
from gateway.plugins import make_plugin_manager
from gateway.settings import DEFAULT_CHAT_MODEL, ApiKey, Settings, TrainingSettings
from gateway.training.registry import collect_trainers
from gateway.training.trainer import Trainer

MODEL = DEFAULT_CHAT_MODEL.name
ECHO = "echo"
"""A served model whose backend takes no adapters: it cannot be trained."""
ADMIN = "admin-key-123456"
TRAIN = "train-key-1234567"
INFERENCE = "inference-key-123"
KEYS = [
    ApiKey(key=ADMIN, name="ops", scopes=["admin"]),
    ApiKey(key=TRAIN, name="trainer", scopes=["train"]),
    ApiKey(key=INFERENCE, name="app", scopes=["inference"]),
]
KINDS = ("sft", "grpo", "finetune")
HI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey there!"}]
SFT_DEFAULTS = {
    "epochs": 3,
    "learning_rate": 1e-4,
    "lora_rank": 16,
    "lora_alpha": 32.0,
    "base_adapter": None,
    "auto_load": True,
    "checkpoint_interval": None,
    "seed": None,
    "stop_when_learned": False,
    "stop_loss": None,
    "warmup_steps": None,
}
GRPO_DEFAULTS = {
    "learning_rate": 1e-5,
    "kl_coeff": 0.1,
    "clip_epsilon": 0.2,
    "lora_rank": 16,
    "lora_alpha": 32.0,
    "base_adapter": None,
    "auto_load": True,
    "checkpoint_interval": None,
    "epochs": 1,
    "seed": None,
}
GROUP = {
    "messages": [{"role": "user", "content": "Name a warm color."}],
    "completions": [{"text": "Orange", "reward": 1.0}, {"text": "Blue", "reward": 0.0}],
}


class _NeverRuns(Trainer):
    """Stands in for a trainer not installed yet: jobs are only queued in these tests."""

    def __init__(self, name: str):
        self.name = name  # type: ignore[misc]

    def run(self, job: Any, context: Any) -> Path:
        raise AssertionError("no job runs in the route tests")


class _StandIns:
    def __init__(self, names: list[str]):
        self.names = names

    @hookimpl
    def register_trainers(self, register: Callable[[Trainer], None]) -> None:
        for name in self.names:
            register(_NeverRuns(name))


def plugin_manager() -> Any:
    """The default plugins, with a stand-in for each of the three trainers not installed."""
    pm = make_plugin_manager()
    missing = [kind for kind in KINDS if kind not in collect_trainers(pm)]
    if missing:
        pm.register(_StandIns(missing), name="trainer-stand-ins")
    return pm


class Served(NamedTuple):
    gateway: Gateway
    client: TestClient
    datasets: Path


def start(settings: Settings) -> tuple[Gateway, TestClient]:
    gateway = Gateway(settings, plugin_manager())
    client = TestClient(create_app(gateway=gateway), timeout=300)
    client.__enter__()
    return gateway, client


@pytest.fixture(scope="module")
def served(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("training")
    (folder / "models").symlink_to((data_dir / "models").resolve(), target_is_directory=True)
    settings = Settings(
        data_dir=str(folder),
        models=[DEFAULT_CHAT_MODEL, ModelSpec(name=ECHO, backend="echo")],
        api_keys=KEYS,
        training=TrainingSettings(jobs_per_model=0),
    )
    gateway, client = start(settings)
    deadline = time.monotonic() + 300
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, client.get("/health").text
        time.sleep(0.2)
    (folder / "datasets").mkdir()
    yield Served(gateway, client, folder / "datasets")
    client.__exit__(None, None, None)


@pytest.fixture
def api(served: Served) -> Iterator[TestClient]:
    """A client with the `train` key; queued jobs are cancelled after each test."""
    client = served.client
    client.headers["Authorization"] = f"Bearer {TRAIN}"
    yield client
    client.headers["Authorization"] = f"Bearer {TRAIN}"
    for job in client.get("/v1/train/queue").json()["queued"]:
        client.delete(f"/v1/train/queue/{job['job_id']}")


def stored(served: Served, job_id: str) -> Any:
    job = served.gateway.training.jobs.get(job_id, with_data=True)
    assert job is not None
    return job


def kiln_error(response: Any, status: int, code: str, param: str | None = None) -> str:
    """Kiln's envelope checked; its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return str(error["message"])


def npu_error(response: Any, status: int) -> str:
    """FastAPI's `{"detail": "..."}` checked; the detail."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["detail"] and isinstance(body["detail"], str), body
    return str(body["detail"])


def seed(method: str, path: str) -> Example:
    (found,) = [e for e in examples("000") if e.method == method and e.path == path]
    return found


def run_job(served: Served, job_id: str, steps: int = 0, total: int = 10) -> None:
    """Move the queued job `job_id` (the oldest of its model) to running, `steps` steps in,
    as a worker does."""
    jobs = served.gateway.training.jobs
    claimed = jobs.claim(MODEL, "test-worker", frozenset(KINDS))
    assert claimed is not None and claimed.id == job_id
    for step in range(1, steps + 1):
        metrics = StepMetrics(
            step=step, epoch=step / total, loss=2.0 / step, learning_rate=1e-4, time=time.time()
        )
        assert jobs.record_step(job_id, metrics, total)
        jobs.log(job_id, f"step {step}")


def sft(api: TestClient, **extra: Any) -> dict[str, Any]:
    response = api.post("/v1/train/sft", json={"examples": [{"messages": HI}], **extra})
    assert response.status_code == 200, response.text
    return dict(response.json())


# ---- Kiln: the seed's requests, verbatim ----------------------------------------------------


def test_seed_sft_request_is_queued_with_kiln_defaults(served: Served, api: TestClient) -> None:
    example = seed("POST", "/v1/train/sft")
    assert example.data is not None
    response = api.post("/v1/train/sft", content=example.data, headers=example.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "queued"
    assert body["message"] == "Queued SFT training with 1 examples (position 1 in queue)"
    assert body["adapter_name"] == "default" and body["model"] == MODEL
    job = stored(served, body["job_id"])
    assert (job.kind, job.model, job.output_name, job.state) == ("sft", MODEL, "default", "queued")
    assert job.config == SFT_DEFAULTS  # the request's epochs and learning rate are the defaults
    assert job.data == json.loads(example.data)["examples"]


def test_metrics_count_jobs_by_kind_and_state(served: Served, api: TestClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    example = seed("POST", "/v1/train/sft")
    assert api.post("/v1/train/sft", content=example.data, headers=example.headers).is_success
    api.headers["Authorization"] = f"Bearer {ADMIN}"
    text = api.get("/metrics").text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("gateway_jobs", (("kind", "sft"), ("state", "queued")))] >= 1
    loaded = ("gateway_model_state", (("model", MODEL), ("state", "loaded")))
    assert samples[loaded] == 1.0


def test_seed_grpo_request_is_queued_with_kiln_defaults(served: Served, api: TestClient) -> None:
    example = seed("POST", "/v1/train/grpo")
    assert example.data is not None
    response = api.post("/v1/train/grpo", content=example.data, headers=example.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == (
        "Queued GRPO training with 1 groups (2 completions, position 1 in queue)"
    )
    job = stored(served, body["job_id"])
    assert (job.kind, job.output_name) == ("grpo", "grpo-demo")
    assert job.config == GRPO_DEFAULTS
    assert job.data == json.loads(example.data)["groups"]


def test_seed_status_request_lists_jobs(served: Served, api: TestClient) -> None:
    job_id = sft(api)["job_id"]
    example = seed("GET", "/v1/train/status")
    response = api.get(example.path)
    assert response.status_code == 200, response.text
    listed = {status["job_id"]: status for status in response.json()}
    status = listed[job_id]
    assert status["state"] == "queued" and status["job_type"] == "sft"
    assert status["progress"] == 0.0 and status["current_loss"] is None
    assert re.fullmatch(r"\d+s ago", status["started_at"])
    assert status["elapsed_secs"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", status["created_at"])
    assert {"adapter_name", "error", "step", "total_steps", "model"} <= set(status)
    assert "loss_history" not in status


# ---- Kiln: submissions ----------------------------------------------------------------------


def test_sft_defaults_and_names(served: Served, api: TestClient) -> None:
    body = sft(api)
    assert re.fullmatch(r"sft-[0-9a-f]{8}", body["adapter_name"])
    assert body["adapter_name"] == f"sft-{body['job_id'][:8]}"
    assert stored(served, body["job_id"]).config == SFT_DEFAULTS
    nulled = sft(api, config=None)
    assert stored(served, nulled["job_id"]).config == SFT_DEFAULTS


def test_sft_config_is_stored_as_given(served: Served, api: TestClient) -> None:
    config = {
        "epochs": 7,
        "learning_rate": 2e-3,
        "lora_rank": 8,
        "lora_alpha": 16.0,
        "output_name": "fact-fix",
        "auto_load": False,
        "checkpoint_interval": 5,
        "seed": 11,
    }
    body = sft(api, config=config, model=MODEL)
    job = stored(served, body["job_id"])
    assert job.output_name == "fact-fix"
    expected = {k: v for k, v in {**SFT_DEFAULTS, **config}.items() if k != "output_name"}
    assert job.config == expected


def test_grpo_defaults_without_config(served: Served, api: TestClient) -> None:
    response = api.post("/v1/train/grpo", json={"groups": [GROUP, GROUP]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"].startswith("Queued GRPO training with 2 groups (4 completions,")
    job = stored(served, body["job_id"])
    assert job.config == GRPO_DEFAULTS
    assert job.output_name == f"grpo-{body['job_id'][:8]}"


def test_unknown_fields_are_ignored_as_kiln_ignores_them(served: Served, api: TestClient) -> None:
    body = sft(api, adapter_name="x", num_epochs=9, config={"num_epochs": 9, "rank": 4})
    assert stored(served, body["job_id"]).config == SFT_DEFAULTS


def test_model_field_picks_the_base_model(api: TestClient) -> None:
    assert sft(api, model=MODEL)["model"] == MODEL
    response = api.post("/v1/train/sft", json={"examples": [{"messages": HI}], "model": ECHO})
    kiln_error(response, 400, "model_not_trainable", "model")
    response = api.post("/v1/train/sft", json={"examples": [{"messages": HI}], "model": "nope"})
    message = kiln_error(response, 404, "model_not_found", "model")
    assert MODEL in message


def test_base_adapter_and_output_name_are_checked(api: TestClient) -> None:
    body = {"examples": [{"messages": HI}], "config": {"base_adapter": "missing"}}
    kiln_error(api.post("/v1/train/sft", json=body), 404, "adapter_not_found", "base_adapter")
    body = {"examples": [{"messages": HI}], "config": {"output_name": "../escape"}}
    kiln_error(api.post("/v1/train/sft", json=body), 400, "invalid_adapter_name", "output_name")


BAD_SFT = [
    ({"examples": []}, "examples", "empty"),
    ({}, "examples", "Missing required field"),
    ({"examples": "Hi"}, "examples", "Expected `array`"),
    ({"examples": [{}]}, "examples[0].messages", "Missing required field"),
    ({"examples": [{"messages": []}]}, "examples[0].messages", "empty"),
    (
        {"examples": [{"messages": [{"role": "user", "content": "Hi"}]}]},
        "examples[0].messages",
        "no assistant turn",
    ),
    (
        {"examples": [{"messages": [*HI[:1], {"role": "assistant", "content": "  "}]}]},
        "examples[0].messages",
        "no assistant turn",
    ),
    (
        {"examples": [{"messages": HI}, {"messages": [{"role": "bot", "content": "x"}, *HI]}]},
        "examples[1].messages[0].role",
        "`bot`",
    ),
    (
        {"examples": [{"messages": [{"role": "user", "content": 3}, HI[1]]}]},
        "examples[0].messages[0].content",
        "Expected `str`",
    ),
    ({"examples": [{"messages": HI}], "config": {"epochs": 0}}, "config.epochs", ">= 1"),
    (
        {"examples": [{"messages": HI}], "config": {"learning_rate": -1}},
        "config.learning_rate",
        "> 0",
    ),
    ({"examples": [{"messages": HI}], "config": {"epochs": "many"}}, "config.epochs", "Expected"),
]


@pytest.mark.parametrize(("body", "param", "says"), BAD_SFT)
def test_sft_refuses_malformed_examples(
    served: Served, api: TestClient, body: Any, param: str, says: str
) -> None:
    before = len(served.gateway.training.jobs.find())
    message = kiln_error(api.post("/v1/train/sft", json=body), 400, "training_invalid_request")
    assert f"`{param}`" in message and says in message, message
    assert api.post("/v1/train/sft", json=body).json()["error"]["param"] == param
    assert len(served.gateway.training.jobs.find()) == before  # nothing queued


def _group(**change: Any) -> dict[str, Any]:
    return {**GROUP, **change}


BAD_GRPO = [
    ({"groups": []}, "groups", "empty"),
    ({"groups": [_group(completions=[])]}, "groups[0].completions", "empty"),
    ({"groups": [_group(messages=[])]}, "groups[0].messages", "empty"),
    (
        {"groups": [GROUP, _group(completions=[{"text": "Red"}])]},
        "groups[1].completions[0].reward",
        "Missing required field",
    ),
    (
        {"groups": [_group(completions=[{"text": "Red", "reward": "high"}])]},
        "groups[0].completions[0].reward",
        "Expected `float`",
    ),
    (
        {"groups": [_group(completions=[{"text": "", "reward": 1.0}])]},
        "groups[0].completions[0].text",
        "empty",
    ),
    (
        {"groups": [_group(messages=[{"role": "narrator", "content": "x"}])]},
        "groups[0].messages[0].role",
        "`narrator`",
    ),
    ({"groups": [{"completions": GROUP["completions"]}]}, "groups[0].messages", "Missing"),
    ({"groups": [GROUP], "config": {"kl_coeff": -0.1}}, "config.kl_coeff", ">= 0"),
]


@pytest.mark.parametrize(("body", "param", "says"), BAD_GRPO)
def test_grpo_refuses_malformed_groups(api: TestClient, body: Any, param: str, says: str) -> None:
    response = api.post("/v1/train/grpo", json=body)
    message = kiln_error(response, 400, "training_invalid_request", param)
    assert f"`{param}`" in message and says in message, message


def test_a_body_that_is_not_json_is_a_400_in_kiln_envelope(api: TestClient) -> None:
    response = api.post(
        "/v1/train/sft", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert "JSON" in kiln_error(response, 400, "training_invalid_request")


# ---- Kiln: status, queue, cancel ------------------------------------------------------------


def test_job_status_reports_progress_loss_history_and_errors(
    served: Served, api: TestClient
) -> None:
    job_id = sft(api)["job_id"]
    status = api.get(f"/v1/train/status/{job_id}").json()
    assert (status["state"], status["loss_history"], status["step"]) == ("queued", [], 0)
    run_job(served, job_id, steps=3, total=10)
    status = api.get(f"/v1/train/status/{job_id}").json()
    assert status["state"] == "running"
    assert (status["step"], status["total_steps"], status["progress"]) == (3, 10, 0.3)
    assert status["current_loss"] == pytest.approx(2.0 / 3)
    assert status["loss_history"] == [
        {"step": s, "loss": pytest.approx(2.0 / s), "learning_rate": 1e-4} for s in (1, 2, 3)
    ]
    served.gateway.training.jobs.finish(job_id, JobState.FAILED, error="the base adapter is bad")
    status = api.get(f"/v1/train/status/{job_id}").json()
    assert (status["state"], status["error"]) == ("failed", "the base adapter is bad")
    first = api.get(f"/v1/train/status/{job_id}").json()["elapsed_secs"]
    assert api.get(f"/v1/train/status/{job_id}").json()["elapsed_secs"] == first  # ended


def test_unknown_job_is_a_404(api: TestClient) -> None:
    kiln_error(api.get("/v1/train/status/nope"), 404, "training_job_not_found", "job_id")
    kiln_error(api.delete("/v1/train/queue/nope"), 404, "training_job_not_found", "job_id")


def test_queue_positions_running_and_completed(served: Served, api: TestClient) -> None:
    first, second, third = (sft(api) for _ in range(3))
    assert first["message"].endswith("(position 1 in queue)")
    assert second["message"].endswith("(position 2 in queue)")
    assert third["message"].endswith("(position 3 in queue)")
    queue = api.get("/v1/train/queue").json()
    assert queue["running"] is None and queue["running_jobs"] == []
    assert queue["queued"] == [
        {
            "job_id": job["job_id"],
            "job_type": "sft",
            "adapter_name": job["adapter_name"],
            "position": position,
            "model": MODEL,
        }
        for position, job in enumerate((first, second, third), 1)
    ]

    run_job(served, first["job_id"], steps=1)
    assert api.delete(f"/v1/train/queue/{second['job_id']}").status_code == 200
    queue = api.get("/v1/train/queue").json()
    assert queue["running"]["job_id"] == first["job_id"]
    assert [s["job_id"] for s in queue["running_jobs"]] == [first["job_id"]]
    assert [(j["job_id"], j["position"]) for j in queue["queued"]] == [(third["job_id"], 1)]
    completed = [s for s in queue["completed"] if s["job_id"] == second["job_id"]]
    assert completed[0]["state"] == "cancelled"

    served.gateway.training.jobs.finish(first["job_id"], JobState.COMPLETED)
    queue = api.get("/v1/train/queue").json()
    assert queue["running"] is None
    order = [s["job_id"] for s in queue["completed"]]
    assert order.index(second["job_id"]) < order.index(first["job_id"])  # newest first
    states = {s["job_id"]: s["state"] for s in api.get("/v1/train/status").json()}
    assert states[first["job_id"]] == "completed" and states[second["job_id"]] == "cancelled"


def test_cancel_a_queued_job_then_409(served: Served, api: TestClient) -> None:
    job_id = sft(api)["job_id"]
    response = api.delete(f"/v1/train/queue/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json() == {"job_id": job_id, "status": "cancelled"}
    assert stored(served, job_id).state == JobState.CANCELLED
    message = kiln_error(
        api.delete(f"/v1/train/queue/{job_id}"), 409, "training_job_not_cancellable"
    )
    assert "cancelled" in message


def test_a_running_job_cannot_be_cancelled(served: Served, api: TestClient) -> None:
    job_id = sft(api)["job_id"]
    run_job(served, job_id)
    kiln_error(api.delete(f"/v1/train/queue/{job_id}"), 409, "training_job_not_cancellable")
    assert stored(served, job_id).state == JobState.RUNNING
    served.gateway.training.jobs.finish(job_id, JobState.COMPLETED)


def test_stop_cancels_a_queued_job_and_asks_a_running_one_to_stop(
    served: Served, api: TestClient
) -> None:
    queued = sft(api)["job_id"]
    reply = api.post(f"/v1/train/stop/{queued}")
    assert reply.status_code == 200, reply.text
    assert (reply.json()["job_id"], reply.json()["state"]) == (queued, "cancelled")
    running = sft(api)["job_id"]
    run_job(served, running)
    reply = api.post(f"/v1/train/stop/{running}")
    assert reply.status_code == 200 and reply.json()["state"] == "running"
    assert stored(served, running).stop_requested  # the worker stops it at its next step
    served.gateway.training.jobs.finish(running, JobState.CANCELLED)
    finished = api.post(f"/v1/train/stop/{running}")
    assert finished.status_code == 200 and finished.json()["state"] == "cancelled"
    kiln_error(api.post("/v1/train/stop/nope"), 404, "training_job_not_found", "job_id")


def test_a_full_queue_is_a_503_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=str(tmp_path),
        models=[ModelSpec(name="lora-echo", backend="echo", options={"adapters": True})],
        training=TrainingSettings(jobs_per_model=0, max_queued_jobs=1),
    )
    _, client = start(settings)
    try:
        body = {"examples": [{"messages": HI}]}
        assert client.post("/v1/train/sft", json=body).status_code == 200
        response = client.post("/v1/train/sft", json=body)
        kiln_error(response, 503, "training_queue_full")
        assert response.headers["retry-after"] == "30"
        form = {"model_id": "lora-echo", "dataset": "d.jsonl"}
        (tmp_path / "datasets").mkdir()
        (tmp_path / "datasets" / "d.jsonl").write_text('{"text": "hello"}\n')
        response = client.post("/api/finetune/start", data=form)
        assert "queue is full" in npu_error(response, 503)
        assert response.headers["retry-after"] == "30"
    finally:
        client.__exit__(None, None, None)


# ---- NPU-STACK: fine-tunes --------------------------------------------------------------------

CHAT_ROWS = [
    {"messages": HI},
    {"prompt": "2+2=", "completion": "4"},
    {"text": "Plain text to learn."},
]


def write(served: Served, name: str, text: str) -> str:
    path = served.datasets / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return name


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def test_finetune_start_with_json_and_a_datasets_file(served: Served, api: TestClient) -> None:
    name = write(served, "chat.jsonl", jsonl(CHAT_ROWS) + "\n")
    response = api.post("/api/finetune/start", json={"model_id": MODEL, "dataset": name})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "job_id": body["job_id"],
        "status": "pending",
        "model": MODEL,
        "dataset": name,
        "config": {
            "epochs": 3,
            "batch_size": 4,
            "learning_rate": 2e-4,
            "use_lora": True,
            "lora_r": 16,
            "lora_alpha": 32.0,
            "text_column": "text",
            "max_length": 512,
        },
    }
    job = stored(served, body["job_id"])
    assert job.kind == "finetune" and job.model == MODEL
    assert job.output_name == f"finetune-{body['job_id'][:8]}"
    assert job.config == {
        "epochs": 3,
        "learning_rate": 2e-4,
        "lora_rank": 16,
        "lora_alpha": 32.0,
        "batch_size": 4,
        "max_length": 512,
        "base_adapter": None,
        "auto_load": False,
        "checkpoint_interval": None,
        "dataset": name,
        "text_column": "text",
    }
    assert job.data == CHAT_ROWS


def test_finetune_start_with_form_fields_and_csv(served: Served, api: TestClient) -> None:
    name = write(served, "sub/notes.csv", 'body,label\n"Line one, with a comma",a\nTwo,b\n')
    form = {
        "model_id": MODEL,
        "dataset": name,
        "epochs": "2",
        "batch_size": "8",
        "learning_rate": "0.001",
        "use_lora": "true",
        "lora_r": "4",
        "lora_alpha": "8",
        "text_column": "body",
        "max_length": "128",
        "output_name": "notes-lora",
        "extra": "ignored",
    }
    response = api.post("/api/finetune/start", data=form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["config"] == {
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 0.001,
        "use_lora": True,
        "lora_r": 4,
        "lora_alpha": 8.0,
        "text_column": "body",
        "max_length": 128,
    }
    job = stored(served, body["job_id"])
    assert job.output_name == "notes-lora"
    assert (job.config["lora_rank"], job.config["epochs"], job.config["batch_size"]) == (4, 2, 8)
    assert job.data == [{"text": "Line one, with a comma"}, {"text": "Two"}]


@pytest.mark.parametrize("field", ["dataset_file", "file"])
def test_finetune_start_with_an_uploaded_file(served: Served, api: TestClient, field: str) -> None:
    rows = [{"content": "From the content column."}, {"input": "From the input column."}]
    files = {field: ("upload.json", json.dumps(rows).encode(), "application/json")}
    response = api.post("/api/finetune/start", data={"model_id": MODEL}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dataset"] == "upload.json"
    job = stored(served, body["job_id"])
    assert job.data == [{"text": "From the content column."}, {"text": "From the input column."}]
    assert job.config["dataset"] == "upload.json"


BAD_FILES = [
    ("broken.jsonl", '{"text": "ok"}\n{"text": \n', "line 2"),
    ("rows.jsonl", jsonl([{"text": "ok"}, {"question": "?", "answer": "!"}]), "line 2"),
    ("chat.jsonl", jsonl([{"messages": [{"role": "user", "content": "Hi"}]}]), "line 1"),
    ("chat.json", json.dumps([{"messages": HI}, {"messages": "Hi"}]), "row 2"),
    ("pairs.json", json.dumps([{"prompt": "2+2=", "completion": 4}]), "row 1"),
    ("object.json", json.dumps({"text": "one"}), "array"),
    ("empty.csv", "text\n", "no rows"),
    ("blank.csv", "text\nok\n\n   \n", "row 2"),
    ("data.parquet", "PAR1", "formats"),
]


@pytest.mark.parametrize(("name", "text", "says"), BAD_FILES)
def test_finetune_refuses_a_bad_file_naming_the_row(
    served: Served, api: TestClient, name: str, text: str, says: str
) -> None:
    before = len(served.gateway.training.jobs.find())
    write(served, name, text)
    response = api.post("/api/finetune/start", json={"model_id": MODEL, "dataset": name})
    detail = npu_error(response, 400)
    assert name in detail and says in detail, detail
    files = {"dataset_file": (name, text.encode(), "application/octet-stream")}
    response = api.post("/api/finetune/start", data={"model_id": MODEL}, files=files)
    assert says in npu_error(response, 400)
    assert len(served.gateway.training.jobs.find()) == before


def test_finetune_reads_only_local_files(served: Served, api: TestClient) -> None:
    response = api.post(
        "/api/finetune/start", data={"model_id": MODEL, "dataset": "tatsu-lab/alpaca"}
    )
    detail = npu_error(response, 400)
    assert "tatsu-lab/alpaca" in detail and "only local files" in detail.lower()
    assert "`datasets/`" in detail and str(served.datasets) not in detail
    (served.datasets.parent / "secret.jsonl").write_text('{"text": "private"}\n')
    for name in ("../secret.jsonl", "sub/../../secret.jsonl", "/etc/passwd", "..\\secret.jsonl"):
        response = api.post("/api/finetune/start", json={"model_id": MODEL, "dataset": name})
        detail = npu_error(response, 400)
        assert "Refused" in detail and str(served.datasets) not in detail, (name, detail)
    (served.datasets / "link.jsonl").symlink_to(served.datasets.parent / "secret.jsonl")
    response = api.post("/api/finetune/start", json={"model_id": MODEL, "dataset": "link.jsonl"})
    assert "leads out" in npu_error(response, 400)


def test_finetune_refuses_full_fine_tunes_and_unknown_models(
    served: Served, api: TestClient
) -> None:
    name = write(served, "ok.jsonl", jsonl([{"text": "ok"}]))
    response = api.post(
        "/api/finetune/start", data={"model_id": MODEL, "dataset": name, "use_lora": "false"}
    )
    assert "LoRA" in npu_error(response, 400)
    response = api.post("/api/finetune/start", json={"model_id": "gpt2", "dataset": name})
    detail = npu_error(response, 404)
    assert "gpt2" in detail and MODEL in detail
    response = api.post("/api/finetune/start", json={"model_id": ECHO, "dataset": name})
    assert "cannot be trained" in npu_error(response, 400)


def test_finetune_missing_or_mistyped_fields_are_422(served: Served, api: TestClient) -> None:
    name = write(served, "ok.jsonl", jsonl([{"text": "ok"}]))
    assert "`model_id`" in npu_error(api.post("/api/finetune/start", json={"dataset": name}), 422)
    assert "`dataset`" in npu_error(api.post("/api/finetune/start", data={"model_id": MODEL}), 422)
    response = api.post(
        "/api/finetune/start", data={"model_id": MODEL, "dataset": name, "epochs": "many"}
    )
    assert "`epochs`" in npu_error(response, 422)
    response = api.post(
        "/api/finetune/start", json={"model_id": MODEL, "dataset": name, "lora_r": 0}
    )
    assert "`lora_r`" in npu_error(response, 422)
    response = api.post(
        "/api/finetune/start", content=b"[1]", headers={"Content-Type": "application/json"}
    )
    npu_error(response, 422)


def test_finetune_jobs_status_stop_and_the_status_mapping(served: Served, api: TestClient) -> None:
    name = write(served, "ok.jsonl", jsonl([{"text": "ok"}]))

    def start_job() -> str:
        response = api.post("/api/finetune/start", json={"model_id": MODEL, "dataset": name})
        assert response.status_code == 200, response.text
        return str(response.json()["job_id"])

    sft_id = sft(api)["job_id"]  # not a fine-tune: absent from the NPU routes
    running, queued, finished, failed = (start_job() for _ in range(4))
    jobs = served.gateway.training.jobs

    listed = api.get("/api/finetune/jobs").json()["jobs"]
    assert sft_id not in {job["id"] for job in listed}
    summary = next(job for job in listed if job["id"] == queued)
    assert summary == {
        "id": queued,
        "model_name": MODEL,
        "dataset": name,
        "status": "pending",
        "created_at": pytest.approx(time.time(), abs=600),
        "current_step": 0,
        "current_epoch": 0.0,
        "error": None,
    }
    npu_error(api.get(f"/api/finetune/status/{sft_id}"), 404)
    npu_error(api.get("/api/finetune/status/nope"), 404)
    npu_error(api.post("/api/finetune/stop/nope"), 404)

    # A running job, 4 steps in, with log lines.
    api.delete(f"/v1/train/queue/{sft_id}")
    run_job(served, running, steps=4, total=8)
    detail = api.get(f"/api/finetune/status/{running}").json()
    assert detail["status"] == "running" and detail["started_at"] is not None
    assert (detail["current_step"], detail["total_steps"]) == (4, 8)
    assert detail["current_epoch"] == 0.5
    assert [m["step"] for m in detail["metrics"]] == [1, 2, 3, 4]
    assert set(detail["metrics"][0]) == {"step", "epoch", "loss", "learning_rate"}
    assert detail["log"] == ["step 1", "step 2", "step 3", "step 4"]
    assert detail["config"]["lora_r"] == 16 and detail["dataset"] == name
    assert (detail["output_dir"], detail["resulting_model_id"], detail["completed_at"]) == (
        None,
        None,
        None,
    )

    # Stop: the running job is stopping, the queued one stopped at once.
    assert api.post(f"/api/finetune/stop/{running}").json() == {"status": "stopping"}
    assert api.get(f"/api/finetune/status/{running}").json()["status"] == "stopping"
    assert api.post(f"/api/finetune/stop/{queued}").json() == {"status": "stopped"}
    assert stored(served, queued).state == JobState.CANCELLED
    assert api.post(f"/api/finetune/stop/{queued}").json() == {
        "status": "stopped",
        "message": "Job is not running",
    }
    jobs.finish(running, JobState.CANCELLED)
    assert api.get(f"/api/finetune/status/{running}").json()["status"] == "stopped"

    # Completed and failed.
    run_job(served, finished, steps=1)
    jobs.finish(finished, JobState.COMPLETED, adapter_path="/adapters/x")
    done = api.get(f"/api/finetune/status/{finished}").json()
    assert done["status"] == "completed" and done["completed_at"] is not None
    assert done["resulting_model_id"] == stored(served, finished).output_name
    assert done["output_dir"] == "/adapters/x"
    assert api.post(f"/api/finetune/stop/{finished}").json() == {
        "status": "completed",
        "message": "Job is not running",
    }
    run_job(served, failed)
    jobs.finish(failed, JobState.FAILED, error="out of memory")
    statuses = {
        job["id"]: (job["status"], job["error"])
        for job in api.get("/api/finetune/jobs").json()["jobs"]
    }
    assert statuses[failed] == ("failed", "out of memory")
    assert statuses[finished] == ("completed", None)
    assert statuses[running] == ("stopped", None)
    listed_ids = [job["id"] for job in api.get("/api/finetune/jobs").json()["jobs"]]
    assert listed_ids.index(failed) < listed_ids.index(running)  # newest first


# ---- scopes -----------------------------------------------------------------------------------

ROUTES = [
    ("POST", "/v1/train/sft"),
    ("POST", "/v1/train/grpo"),
    ("GET", "/v1/train/status"),
    ("GET", "/v1/train/status/x"),
    ("GET", "/v1/train/queue"),
    ("DELETE", "/v1/train/queue/x"),
    ("POST", "/v1/train/stop/x"),
    ("POST", "/api/finetune/start"),
    ("GET", "/api/finetune/jobs"),
    ("GET", "/api/finetune/status/x"),
    ("POST", "/api/finetune/stop/x"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_the_train_scope(served: Served, method: str, path: str) -> None:
    client = served.client
    body = {"examples": [{"messages": HI}], "groups": [GROUP]} if method == "POST" else None

    def call(key: str) -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        if body is None:
            return client.request(method, path, headers=headers)
        return client.request(method, path, headers=headers, json=body)

    refused = call(INFERENCE)
    assert refused.status_code == 403, refused.text
    if path.startswith("/v1/"):
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("permission_error", "insufficient_scope")
    else:
        npu_error(refused, 403)
    for key in (TRAIN, ADMIN):
        assert call(key).status_code not in (401, 403)
    no_key = client.request(method, path, headers={"Authorization": ""})
    assert no_key.status_code == 401
    for job in client.get("/v1/train/queue", headers={"Authorization": f"Bearer {ADMIN}"}).json()[
        "queued"
    ]:
        client.delete(
            f"/v1/train/queue/{job['job_id']}", headers={"Authorization": f"Bearer {ADMIN}"}
        )
