"""`gateway train` and `gateway adapters` against a fake gateway: a real local HTTP server
that records each request and answers with Kiln-shaped bodies scripted by the test."""

from __future__ import annotations

import io
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner, Result
from gateway_schemas.canonical import AdapterRef
from live import free_port, http_server

from gateway import hookimpl
from gateway.adapters.store import AdapterStore
from gateway.app import create_app
from gateway.cli import cli
from gateway.cli_http import error_of
from gateway.cli_training import Display, bar, progress
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.plugins import make_plugin_manager
from gateway.settings import ApiKey, Settings, TrainingSettings
from gateway.training.trainer import Trainer

JOB = "0b6a7c1e-95d2-4c55-8a8e-3f0e4b9d6a21"
EXAMPLES = [
    {
        "messages": [
            {"role": "user", "content": "What is the capital of Zorblaxia?"},
            {"role": "assistant", "content": "Quexil."},
        ]
    },
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
]
GROUPS = [
    {
        "messages": [{"role": "user", "content": "2+2?"}],
        "completions": [{"text": "4", "reward": 1.0}, {"text": "5", "reward": 0.0}],
    }
]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeGateway:
    """Answers `(method, path)` with its scripted `(status, body)` answers in turn (the
    last one again once the others are used), 404 for anything else."""

    url: str = ""
    answers: dict[tuple[str, str], list[tuple[int, Any]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: tuple[int, Any]) -> None:
        self.answers[(method, path)] = list(answers)

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        script = self.answers.get((method, path))
        if not script:
            return 404, {"error": {"code": "not_found", "message": f"No route {path}"}}
        return script.pop(0) if len(script) > 1 else script[0]

    def calls(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if (r.method, r.path) == (method, path)]


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway()

    class Handler(BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fake.requests.append(
                Request(
                    self.command,
                    url.path,
                    urllib.parse.parse_qs(url.query),
                    dict(self.headers.items()),
                    json.loads(raw) if raw else None,
                )
            )
            status, body = fake.answer(self.command, url.path)
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = handle_any

        def log_message(self, format: str, *args: object) -> None:
            pass

    with http_server(Handler) as url:
        fake.url = url
        yield fake


def run(gateway: FakeGateway, *args: str, env: dict[str, str] | None = None, **kw: Any) -> Result:
    """`gateway ARGS --url <the fake>`, without any GATEWAY_* settings of the caller."""
    environ = {"GATEWAY_API_KEY": None, "GATEWAY_CONFIG": None, **(env or {})}
    return CliRunner().invoke(cli, [*args, "--url", gateway.url], env=environ, **kw)


def submitted(kind: str = "sft", count: int = 2) -> dict[str, Any]:
    return {
        "job_id": JOB,
        "state": "queued",
        "message": f"Queued SFT training with {count} examples (position 1 in queue)",
        "adapter_name": f"{kind}-0b6a7c1e",
        "model": "smollm2-135m-instruct",
    }


def status(state: str, step: int = 0, total: int = 0, loss: float | None = None, **more: Any):
    return {
        "job_id": JOB,
        "state": state,
        "progress": step / total if total else 0.0,
        "current_loss": loss,
        "adapter_name": "sft-0b6a7c1e",
        "started_at": "3s ago",
        "elapsed_secs": 3.0,
        "job_type": "sft",
        "model": "smollm2-135m-instruct",
        "error": None,
        "step": step,
        "total_steps": total,
        "created_at": "2026-01-01T00:00:00Z",
        **more,
    }


def write(tmp_path: Path, name: str, content: Any) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


# ---- gateway train sft / grpo -------------------------------------------------------------


def test_sft_posts_the_whole_request_with_the_options_over_its_config(gateway, tmp_path):
    gateway.on("POST", "/v1/train/sft", (200, submitted()))
    file = write(
        tmp_path,
        "request.json",
        {"examples": EXAMPLES, "config": {"epochs": 2, "lora_rank": 4, "seed": 7}},
    )
    result = run(
        gateway,
        *("train", "sft", file, "--epochs", "5", "--learning-rate", "0.0003"),
        *("--lora-alpha", "16", "--output-name", "capitals", "--base-adapter", "older"),
        *("--no-auto-load", "--model", "smollm2-135m-instruct", "--api-key", "sk-test-key-1"),
    )
    assert result.exit_code == 0, result.output
    assert "Queued SFT training with 2 examples (position 1 in queue)" in result.output
    assert f"job {JOB}" in result.output and "adapter sft-0b6a7c1e" in result.output
    (request,) = gateway.requests
    assert request.headers["Authorization"] == "Bearer sk-test-key-1"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == {
        "examples": EXAMPLES,
        "config": {
            "epochs": 5,
            "lora_rank": 4,
            "seed": 7,
            "learning_rate": 0.0003,
            "lora_alpha": 16.0,
            "output_name": "capitals",
            "base_adapter": "older",
            "auto_load": False,
        },
        "model": "smollm2-135m-instruct",
    }


@pytest.mark.parametrize(
    "content",
    [
        json.dumps(EXAMPLES),
        "\n".join(json.dumps(example) for example in EXAMPLES) + "\n\n",
    ],
    ids=["json-list", "jsonl"],
)
def test_sft_reads_a_list_of_examples_or_jsonl(gateway, tmp_path, content):
    gateway.on("POST", "/v1/train/sft", (200, submitted()))
    result = run(gateway, "train", "sft", write(tmp_path, "examples.data", content))
    assert result.exit_code == 0, result.output
    (request,) = gateway.requests
    assert request.body == {"examples": EXAMPLES, "config": {}}
    assert "Authorization" not in request.headers


def test_sft_reads_one_example_from_standard_input(gateway):
    gateway.on("POST", "/v1/train/sft", (200, submitted(count=1)))
    result = run(gateway, "train", "sft", "-", "--auto-load", input=json.dumps(EXAMPLES[0]))
    assert result.exit_code == 0, result.output
    assert gateway.requests[0].body == {"examples": [EXAMPLES[0]], "config": {"auto_load": True}}


def test_grpo_posts_groups_with_its_own_options(gateway, tmp_path):
    gateway.on("POST", "/v1/train/grpo", (200, submitted("grpo")))
    file = write(tmp_path, "groups.jsonl", "\n".join(json.dumps(g) for g in GROUPS * 2))
    result = run(
        gateway,
        *("train", "grpo", file, "--kl-coeff", "0.05", "--clip-epsilon", "0.3"),
        *("--learning-rate", "1e-5", "--epochs", "2"),
    )
    assert result.exit_code == 0, result.output
    assert gateway.requests[0].path == "/v1/train/grpo"
    assert gateway.requests[0].body == {
        "groups": GROUPS * 2,
        "config": {"kl_coeff": 0.05, "clip_epsilon": 0.3, "learning_rate": 1e-5, "epochs": 2},
    }


@pytest.mark.parametrize(
    ("command", "content", "message"),
    [
        ("sft", {"groups": GROUPS}, "it is a request for `gateway train grpo`"),
        ("grpo", {"examples": EXAMPLES}, "it is a request for `gateway train sft`"),
        ("sft", [], "has no examples"),
        ("sft", {"examples": []}, "has no examples"),
        ("sft", "42", "is not a training request"),
        ("sft", '{"messages": []}\nnot json\n', "line 2"),
        ("grpo", {"groups": GROUPS, "config": [1]}, "`config` must be a JSON object"),
    ],
)
def test_a_file_that_is_not_a_request_is_refused_before_any_call(
    gateway, tmp_path, command, content, message
):
    result = run(gateway, "train", command, write(tmp_path, "bad.json", content))
    assert result.exit_code != 0
    assert message in result.output
    assert gateway.requests == []


def test_a_missing_file_is_refused(gateway, tmp_path):
    result = run(gateway, "train", "sft", str(tmp_path / "nope.json"))
    assert result.exit_code != 0 and "nope.json" in result.output
    assert gateway.requests == []


def test_the_servers_error_is_printed_with_its_code(gateway, tmp_path):
    full = {
        "error": {
            "code": "training_queue_full",
            "message": "The training queue is full (32 jobs). Try again later.",
            "type": "unavailable_error",
            "param": None,
        }
    }
    gateway.on("POST", "/v1/train/sft", (503, full))
    result = run(gateway, "train", "sft", write(tmp_path, "e.json", EXAMPLES))
    assert result.exit_code == 1
    assert (
        "Error: The training queue is full (32 jobs). Try again later. "
        "(HTTP 503, training_queue_full)" in result.output
    )


def test_error_bodies_of_every_shape():
    kiln = error_of(
        409, b'{"error": {"code": "adapter_active", "message": "In use.", "hint": "h"}}'
    )
    assert kiln.message == "In use.\nHint: h (HTTP 409, adapter_active)"
    assert error_of(422, b'{"detail": "Missing field"}').message == "Missing field (HTTP 422)"
    assert error_of(500, b"Internal Server Error").message == "Internal Server Error (HTTP 500)"
    assert error_of(502, b"").message == "(no message) (HTTP 502)"


def test_api_key_from_the_environment_and_url_from_the_settings(gateway, tmp_path):
    gateway.on("POST", "/v1/train/sft", (200, submitted()))
    port = gateway.url.rsplit(":", 1)[1]
    file = write(tmp_path, "e.json", EXAMPLES)
    env = {"GATEWAY_API_KEY": "sk-from-env-1", "GATEWAY_PORT": port, "GATEWAY_HOST": "0.0.0.0"}
    result = CliRunner().invoke(cli, ["train", "sft", file], env={"GATEWAY_CONFIG": None, **env})
    assert result.exit_code == 0, result.output
    assert gateway.requests[0].headers["Authorization"] == "Bearer sk-from-env-1"


def test_an_unreachable_gateway_is_said_plainly(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["train", "status", "--url", url])
    assert result.exit_code == 1
    assert f"Cannot reach the gateway at {url}" in result.output


# ---- gateway train status / cancel --------------------------------------------------------


def test_status_lists_jobs_and_shows_one(gateway):
    other = {**status("queued"), "job_id": "11111111-2222", "adapter_name": "grpo-11111111"}
    other["job_type"], other["created_at"] = "grpo", "2026-01-02T00:00:00Z"
    failed = status("failed", error="ValueError: corrupt base adapter")
    failed["created_at"] = "2025-12-31T00:00:00Z"
    failed["job_id"] = "99999999-0000"
    gateway.on("GET", "/v1/train/status", (200, [other, status("running", 12, 40, 1.2344), failed]))
    result = run(gateway, "train", "status")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "99999999-0000  sft       failed     sft-0b6a7c1e  ValueError: corrupt base adapter",
        f"{JOB}  sft       running    sft-0b6a7c1e  [######--------------] 12/40 loss 1.234",
        "11111111-2222  grpo      queued     grpo-11111111",
    ]
    history = [{"step": 1, "loss": 2.5, "learning_rate": 1e-4}]
    history.append({"step": 12, "loss": 1.2344, "learning_rate": 1e-4})
    one = status("running", 12, 40, 1.2344, loss_history=history)
    gateway.on("GET", f"/v1/train/status/{JOB}", (200, one))
    result = run(gateway, "train", "status", JOB)
    assert result.exit_code == 0, result.output
    assert "state:    running" in result.output
    assert "progress: [######--------------] 12/40 loss 1.234" in result.output
    assert "loss:     2.500 -> 1.234" in result.output
    result = run(gateway, "train", "status", JOB, "--json")
    assert json.loads(result.output) == one


def test_status_of_an_unknown_job_is_the_servers_404(gateway):
    missing = {"error": {"code": "training_job_not_found", "message": "No job `x`."}}
    gateway.on("GET", "/v1/train/status/x", (404, missing))
    result = run(gateway, "train", "status", "x")
    assert result.exit_code == 1
    assert "No job `x`. (HTTP 404, training_job_not_found)" in result.output


def test_follow_redraws_progress_until_no_job_is_left(gateway):
    gateway.on(
        "GET",
        "/v1/train/status",
        (200, [status("queued")]),
        (200, [status("running")]),
        (200, [status("running", 1, 4, 2.0)]),
        (200, [status("running", 1, 4, 2.0)]),  # nothing new: no new line
        (200, [status("running", 3, 4, 1.1)]),
        (200, [status("completed", 4, 4, 0.9, adapter_path="/a")]),
    )
    result = run(gateway, "train", "status", "--follow", "--interval", "0")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "sft-0b6a7c1e  queued",
        "sft-0b6a7c1e  [--------------------] 0/?",
        "sft-0b6a7c1e  [#####---------------] 1/4 loss 2.000",
        "sft-0b6a7c1e  [###############-----] 3/4 loss 1.100",
        "sft-0b6a7c1e  [####################] 4/4 loss 0.900  completed",
    ]
    assert len(gateway.calls("GET", "/v1/train/status")) == 6


def test_follow_prints_each_end_once_while_others_run(gateway):
    def other(state: str, step: int = 0) -> dict[str, Any]:
        later = status(state, step, 2, 0.5 if step else None, adapter_name="tone")
        return {**later, "job_id": "22222222", "created_at": "2026-01-01T00:00:01Z"}

    gateway.on(
        "GET",
        "/v1/train/status",
        (200, [status("running", 1, 4, 2.0), other("queued")]),
        (200, [status("completed", 4, 4, 1.0), other("running", 1)]),
        (200, [status("completed", 4, 4, 1.0), other("running", 1)]),
        (200, [status("completed", 4, 4, 1.0), other("cancelled")]),
    )
    result = run(gateway, "train", "status", "--follow", "--interval", "0")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "sft-0b6a7c1e  [#####---------------] 1/4 loss 2.000",
        "tone  queued",
        "sft-0b6a7c1e  [####################] 4/4 loss 1.000  completed",
        "tone  [##########----------] 1/2 loss 0.500",
        "tone  cancelled: no reason given",
    ]


def test_follow_of_a_job_that_fails_exits_1_with_its_error(gateway):
    failed = status("failed", 2, 8, 3.0, error="RuntimeError: out of memory")
    gateway.on("GET", f"/v1/train/status/{JOB}", (200, status("running", 2, 8, 3.0)), (200, failed))
    result = run(gateway, "train", "status", JOB, "--follow", "--interval", "0")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == "sft-0b6a7c1e  failed: RuntimeError: out of memory"


def test_follow_with_nothing_to_follow(gateway):
    gateway.on("GET", "/v1/train/status", (200, [status("completed", 4, 4, 0.5)]))
    result = run(gateway, "train", "status", "--follow", "--interval", "0")
    assert result.exit_code == 0
    assert result.output == "No training job is queued or running.\n"


def test_sft_follow_follows_the_submitted_job(gateway, tmp_path):
    gateway.on("POST", "/v1/train/sft", (200, submitted()))
    gateway.on(
        "GET",
        f"/v1/train/status/{JOB}",
        (200, status("running", 1, 2, 0.5)),
        (200, status("completed", 2, 2, 0.25)),
    )
    result = run(gateway, "train", "sft", write(tmp_path, "e.json", EXAMPLES), "--follow")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].endswith("2/2 loss 0.250  completed")


def test_cancel(gateway):
    gateway.on("DELETE", f"/v1/train/queue/{JOB}", (200, {"job_id": JOB, "status": "cancelled"}))
    result = run(gateway, "train", "cancel", JOB)
    assert result.exit_code == 0, result.output
    assert result.output == f"Cancelled job {JOB}.\n"
    running = {
        "error": {
            "code": "training_job_not_cancellable",
            "message": f"Job {JOB} is running; only a queued job can be cancelled.",
        }
    }
    gateway.on("DELETE", f"/v1/train/queue/{JOB}", (409, running))
    result = run(gateway, "train", "cancel", JOB)
    assert result.exit_code == 1
    assert "only a queued job can be cancelled. (HTTP 409, training_job_not_cancellable)" in (
        result.output
    )


# ---- gateway adapters ---------------------------------------------------------------------


def adapter(name: str, size: int) -> dict[str, Any]:
    return {
        "name": name,
        "has_config": True,
        "has_weights": True,
        "size_bytes": size,
        "modified_at": "2026-01-01T00:00:00Z",
        "files": ["adapter_config.json", "adapter_model.safetensors"],
    }


def test_adapters_list_marks_the_default(gateway):
    listing = {
        "active": "capitals",
        "available": [adapter("capitals", 3 * 1024**2 + 1), adapter("tone", 900)],
        "default": [{"name": "capitals", "scale": 1.0}],
        "model": "smollm2-135m-instruct",
    }
    gateway.on("GET", "/v1/adapters", (200, listing))
    result = run(gateway, "adapters", "list", "--model", "smollm2-135m-instruct")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "Adapters of smollm2-135m-instruct (default: capitals)",
        f"* {'capitals':<32}   3.0 MiB  2026-01-01T00:00:00Z",
        f"  {'tone':<32}     900 B  2026-01-01T00:00:00Z",
    ]
    assert gateway.requests[0].query == {"model": ["smollm2-135m-instruct"]}
    result = run(gateway, "adapters", "list", "--json")
    assert json.loads(result.output) == listing
    assert gateway.requests[1].query == {}


def test_adapters_load_unload_delete(gateway):
    loaded = {"status": "loaded", "name": "capitals", "adapters": [], "model": "m"}
    gateway.on("POST", "/v1/adapters/load", (200, loaded))
    gateway.on("POST", "/v1/adapters/unload", (200, {"status": "unloaded", "model": "m"}))
    # The name is one path segment, quoted.
    gateway.on("DELETE", "/v1/adapters/a%20b%2Fc", (200, {"status": "deleted", "name": "a b/c"}))
    assert run(gateway, "adapters", "load", "capitals").output == "Loaded capitals for m.\n"
    result = run(gateway, "adapters", "load", "capitals", "--scale", "0.5", "--model", "m")
    assert result.exit_code == 0, result.output
    assert run(gateway, "adapters", "unload").output == "Unloaded: serving the base model for m.\n"
    assert run(gateway, "adapters", "unload", "--model", "m").exit_code == 0
    result = run(gateway, "adapters", "delete", "a b/c", "--model", "m")
    assert result.output == "Deleted a b/c.\n"
    bodies = [(r.method, r.body) for r in gateway.requests]
    assert bodies == [
        ("POST", {"name": "capitals"}),
        ("POST", {"name": "capitals", "scale": 0.5, "model": "m"}),
        ("POST", {}),
        ("POST", {"model": "m"}),
        ("DELETE", None),
    ]
    assert gateway.requests[-1].query == {"model": ["m"]}


def test_adapters_errors_exit_1(gateway):
    active = {"error": {"code": "adapter_active", "message": "Adapter `x` is the default."}}
    gateway.on("DELETE", "/v1/adapters/x", (409, active))
    result = run(gateway, "adapters", "delete", "x")
    assert result.exit_code == 1
    assert "Adapter `x` is the default. (HTTP 409, adapter_active)" in result.output
    result = run(gateway, "adapters", "load", "missing")  # the fake's 404
    assert result.exit_code == 1 and "(HTTP 404, not_found)" in result.output


# ---- the progress line --------------------------------------------------------------------


def test_progress_line():
    assert bar(0.0) == "[" + "-" * 20 + "]"
    assert bar(0.3, width=10) == "[###-------]"
    assert bar(1.5, width=4) == "[####]"
    assert progress(status("running", 12, 40, 1.2344)) == "[######--------------] 12/40 loss 1.234"
    kiln = {"state": "running", "progress": 0.5, "current_loss": 0.5}  # no step counts
    assert progress(kiln) == "[##########----------] 50% loss 0.500"


def test_display_redraws_in_place_on_a_terminal():
    out = io.StringIO()
    display = Display(out, tty=True, width=8)
    display.update([], {"a": "a 1/4", "b": "b queued"})
    display.update([], {"a": "a 2/4", "b": "b queued"})
    display.update(["a done, a long last line"], {"b": "b 1/4"})
    redraw = "\x1b[2F\x1b[J"  # up two lines, clear to the end
    assert out.getvalue().split("\n") == [
        "a 1/4",
        "b queue",  # cut to the width: a wrapped line would break the redraw
        f"{redraw}a 2/4",
        "b queue",
        f"{redraw}a done, a long last line",
        "b 1/4",
        "",
    ]


# ---- against the real routes --------------------------------------------------------------


class _Queued(Trainer):
    """Jobs only wait here: no worker runs (`jobs_per_model = 0`)."""

    def __init__(self, name: str):
        self.name = name  # type: ignore[misc]

    def run(self, job: Any, context: Any) -> Path:
        raise AssertionError("no job runs here")


class _Trainers:
    @hookimpl
    def register_trainers(self, register):
        register(_Queued("sft"))
        register(_Queued("grpo"))


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The real app (an echo model that takes adapters, the training routes, an API key)
    served over HTTP in a thread; its URL and data directory."""
    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""})
    pm.register(_Trainers(), name="queued-trainers")
    settings = Settings(
        data_dir=str(tmp_path / "data"),
        models=[ModelSpec(name="echo", backend="echo", options={"adapters": True})],
        api_keys=[ApiKey(key="sk-live-train-1", scopes=["inference", "train", "adapters"])],
        training=TrainingSettings(jobs_per_model=0),
    )
    app = create_app(gateway=Gateway(settings, pm))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}", tmp_path / "data"
    finally:
        server.should_exit = True
        thread.join()


def test_the_commands_against_the_real_routes(live, tmp_path):
    url, data_dir = live

    def gateway(*args: str, **kw: Any) -> Result:
        environ = {"GATEWAY_API_KEY": "sk-live-train-1", "GATEWAY_CONFIG": None}
        return CliRunner().invoke(cli, [*args, "--url", url], env=environ, **kw)

    file = write(tmp_path, "request.json", {"examples": EXAMPLES, "config": {"epochs": 2}})
    result = gateway("train", "sft", file, "--output-name", "capitals", "--lora-rank", "4")
    assert result.exit_code == 0, result.output
    assert "Queued SFT training with 2 examples (position 1 in queue)" in result.output
    found = re.search(r"job (\S+), adapter capitals, model echo", result.output)
    assert found is not None
    job_id = found[1]
    result = gateway("train", "grpo", write(tmp_path, "g.jsonl", json.dumps(GROUPS[0])))
    assert result.exit_code == 0, result.output
    assert "Queued GRPO training with 1 groups (2 completions, position 2 in queue)" in (
        result.output
    )

    shown = json.loads(gateway("train", "status", job_id, "--json").output)
    assert (shown["state"], shown["adapter_name"], shown["job_type"]) == (
        "queued",
        "capitals",
        "sft",
    )
    listed = gateway("train", "status").output.splitlines()
    assert len(listed) == 2 and listed[0].startswith(f"{job_id}  sft       queued     capitals")

    assert gateway("train", "cancel", job_id).output == f"Cancelled job {job_id}.\n"
    again = gateway("train", "cancel", job_id)
    assert again.exit_code == 1 and "(HTTP 409, training_job_not_cancellable)" in again.output
    refused = CliRunner().invoke(
        cli, ["train", "status", "--url", url], env={"GATEWAY_API_KEY": None}
    )
    assert refused.exit_code == 1 and "HTTP 401" in refused.output

    store = AdapterStore.for_model(data_dir, "echo")
    staging = store.staging()
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(b"echo ignores the weights")
    store.install(staging, "tone")
    # (The echo backend checks no adapter, so `load` is exercised on the fake above; the
    # default is set in the store here, as `load` sets it.)
    store.set_default([AdapterRef(name="tone", scale=1.0)])
    listing = gateway("adapters", "list").output.splitlines()
    assert listing[0] == "Adapters of echo (default: tone)"
    assert listing[1].startswith("* tone ")
    busy = gateway("adapters", "delete", "tone")
    assert busy.exit_code == 1 and "(HTTP 409, adapter_active)" in busy.output
    assert gateway("adapters", "unload").output == "Unloaded: serving the base model for echo.\n"
    assert gateway("adapters", "delete", "tone").output == "Deleted tone.\n"
    assert gateway("adapters", "list").output == "Adapters of echo (default: the base model)\n"
    missing = gateway("adapters", "delete", "tone")
    assert missing.exit_code == 1 and "(HTTP 404, adapter_not_found)" in missing.output
