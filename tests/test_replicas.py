"""Two `gateway serve` processes of the real default model on loopback, as replicas: one
data directory (adapters, datasets), one PostgreSQL database (jobs, Kobold stories,
recorded prompts) and one local Ray cluster (`[jobs] runner = "ray"`). A job submitted to
one runs once and its adapter is served by both; killing the replica that runs a job
lets the other take it over."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import LiveServer, start_server, stop_server

from gateway.jobs import JobStore
from gateway.jobs.open import open_job_store

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of Zorbania?"
CORRECTION = {
    "messages": [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "The capital of Zorbania is Quillport."},
    ]
}
FAST = {"learning_rate": 1e-3, "epochs": 10, "stop_when_learned": True}
FINISHED = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def database(postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(postgres.database_for(str(tmp_path_factory.mktemp("replicas-db"))))


@pytest.fixture(scope="module")
def store(database: str) -> Iterator[JobStore]:
    """The replicas' job store, read by the test directly."""
    opened = open_job_store(database)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def replicas(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, database: str, ray_cluster: str
) -> Iterator[list[LiveServer]]:
    folder = tmp_path_factory.mktemp("replicas")
    shared = data_dir / "models"  # the converted weights of the session, not converted again
    shared.mkdir(parents=True, exist_ok=True)
    (folder / "models").symlink_to(shared.resolve(), target_is_directory=True)
    env = {
        "GATEWAY_DATA_DIR": str(folder),
        "GATEWAY_DATABASE_URL": database,
        "GATEWAY_JOBS__RUNNER": "ray",
        "GATEWAY_JOBS__RAY_ADDRESS": ray_cluster,
        "GATEWAY_TRAINING__LEASE_SECONDS": "3",
    }
    started: list[LiveServer] = []
    try:
        for name in ("a", "b"):
            started.append(start_server(["--model", MODEL], env, folder / f"replica-{name}.log"))
        yield started
    finally:
        for server in started:
            if server.process.poll() is None:
                stop_server(server)


def submit(url: str, name: str) -> str:
    body = {"examples": [CORRECTION], "config": {**FAST, "output_name": name}}
    reply = httpx.post(f"{url}/v1/train/sft", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["job_id"])


def status(url: str, job_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{url}/v1/train/status/{job_id}", timeout=60)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def logs(store: JobStore, job_id: str) -> list[str]:
    return [line.message for line in store.logs(job_id)]


def wait(url: str, job_id: str, *states: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (found := status(url, job_id))["state"] not in states:
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    return found


def chat(url: str) -> tuple[str, str]:
    """The greedy answer to QUESTION, and the adapters that served it."""
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
    reply = httpx.post(f"{url}/v1/chat/completions", json={**body, "temperature": 0}, timeout=120)
    assert reply.status_code == 200, reply.text
    content = str(reply.json()["choices"][0]["message"]["content"])
    return content, reply.headers.get("x-gateway-adapters", "")


def test_a_job_runs_once_and_both_replicas_serve_its_adapter(
    replicas: list[LiveServer], store: JobStore
):
    a, b = replicas
    job_id = submit(a.url, "zorbania")
    done = wait(b.url, job_id, *FINISHED)  # either replica answers for any job
    assert done["state"] == "completed", done
    said = logs(store, job_id)
    assert sum(line.startswith("started sft job") for line in said) == 1, said
    assert any("submitted to the Ray cluster" in line for line in said)
    # The adapter is the default of both replicas, which answer alike with it.
    answers = [chat(server.url) for server in (a, b)]
    assert [served for _, served in answers] == ["zorbania@1", "zorbania@1"], answers
    assert answers[0][0] == answers[1][0]


def test_killing_the_replica_that_runs_a_job_lets_the_other_take_it_over(
    replicas: list[LiveServer], store: JobStore
):
    a, b = replicas
    job_id = submit(b.url, "takeover")
    deadline = time.monotonic() + 600
    while not any(line.startswith("started sft job") for line in logs(store, job_id)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    job = store.get(job_id)
    worker = job.worker if job and job.worker else ""
    owner, survivor = (a, b) if f":{a.process.pid}:" in worker else (b, a)
    assert f":{owner.process.pid}:" in worker, worker
    os.kill(owner.process.pid, signal.SIGKILL)
    owner.process.wait(timeout=30)
    done = wait(survivor.url, job_id, *FINISHED)
    assert done["state"] == "completed", done
    said = logs(store, job_id)
    assert "its worker's lease ran out: queued again to start over" in said, said
    assert sum(line.startswith("started sft job") for line in said) == 2, said
    assert chat(survivor.url)[1] == "takeover@1"
