"""Training on the real default model through a live `gateway serve`: a correction that
changes the next answer, a webhook on completion and on failure, serving during training,
and the two kills (the worker, the server) that must lose no queued job.

The server trains SmolLM2-135M-Instruct with the `sft` trainer of gateway-trainers in its
worker process; its webhook points at a receiver in this test process.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import LiveServer, http_server, start_server, stop_server

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of Zorbania?"
FACT = "Quillport"
CORRECTION = {
    "messages": [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": f"The capital of Zorbania is {FACT}."},
    ]
}
FAST = {"learning_rate": 1e-3, "epochs": 10, "stop_when_learned": True}
"""A correction config that teaches one fact in a few seconds (see the trainers' README)."""
LONG = {"examples": [CORRECTION], "config": {"epochs": 2000, "auto_load": False}}
"""A job that runs until it is killed."""
FINISHED = ("completed", "failed", "cancelled")


class Receiver:
    """Records the webhook calls it gets (served by `http_server`)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.url = ""

    def wait_for(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for call in self.calls:
                if call["job_id"] == job_id:
                    return call
            assert time.monotonic() < deadline, f"no webhook for {job_id}: {self.calls}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            found.calls.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Handler) as url:
        found.url = f"{url}/hook"
        yield found


def serve(data_dir: Path, folder: Path, receiver: Receiver) -> LiveServer:
    """`gateway serve` of the chat model in `folder` (sharing the converted weights), its
    training worker preloaded, webhooks to `receiver`."""
    models, shared = folder / "models", data_dir / "models"
    shared.mkdir(parents=True, exist_ok=True)  # a link to nothing yet would not be a folder
    if not models.exists():
        models.symlink_to(shared.resolve(), target_is_directory=True)
    env = {
        "GATEWAY_DATA_DIR": str(folder),
        "GATEWAY_TRAINING__PRELOAD": "true",
        "GATEWAY_TRAINING_WEBHOOK_URL": receiver.url,
    }
    return start_server(["--model", MODEL], env, folder / f"server-{time.time_ns()}.log")


@pytest.fixture(scope="module")
def server(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[LiveServer]:
    live = serve(data_dir, tmp_path_factory.mktemp("training"), receiver)
    yield live
    stop_server(live)


def chat(url: str, question: str = QUESTION) -> str:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 24}
    reply = httpx.post(f"{url}/v1/chat/completions", json={**body, "temperature": 0}, timeout=120)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


def submit(url: str, body: dict[str, Any], kind: str = "sft") -> str:
    reply = httpx.post(f"{url}/v1/train/{kind}", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["job_id"])


def status(url: str, job_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{url}/v1/train/status/{job_id}", timeout=60)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def wait(url: str, job_id: str, *states: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = status(url, job_id)
        if found["state"] in states:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.1)


def wait_training(url: str, job_id: str) -> None:
    """Until the job is running and has made a step."""
    deadline = time.monotonic() + 600
    while not (found := status(url, job_id))["current_loss"]:
        assert found["state"] in ("queued", "running"), found
        assert time.monotonic() < deadline
        time.sleep(0.1)


def workers(url: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{url}/health", timeout=30).json()["training"]["workers"])


def wait_worker_ready(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    while not (ready := [w for w in workers(url) if w["ready"]]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return ready[0]


def test_one_correction_changes_the_next_answer(server: LiveServer, receiver: Receiver):
    wait_worker_ready(server.url)
    assert FACT not in chat(server.url)
    # Requests keep coming while the job trains and its adapter is swapped in: none fails.
    answers: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while not stop.is_set():
                body = {"messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 8}
                answers.append(client.post("/v1/chat/completions", json=body).status_code)

    background = threading.Thread(target=traffic)
    background.start()
    started = time.perf_counter()
    job_id = submit(
        server.url, {"examples": [CORRECTION], "config": {**FAST, "output_name": "zorbania"}}
    )
    done = wait(server.url, job_id, *FINISHED)
    answer = chat(server.url)
    elapsed = time.perf_counter() - started
    stop.set()
    background.join()
    assert answers and set(answers) == {200}, answers
    print(f"submit-to-changed-answer: {elapsed:.2f}s ({done['step']} steps)")
    assert done["state"] == "completed", done
    assert FACT in answer, answer
    # The adapter is the server default now; the base model still answers without it.
    assert (
        FACT
        not in httpx.post(
            f"{server.url}/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": 24,
                "temperature": 0,
                "adapter": None,
            },
            timeout=120,
        ).json()["choices"][0]["message"]["content"]
    )
    call = receiver.wait_for(job_id)
    assert call["status"] == "completed" and call["adapter_name"] == "zorbania"
    assert call["adapter_path"] and call["job_type"] == "sft" and call["error"] is None


def test_serving_goes_on_while_a_job_trains(server: LiveServer):
    job_id = submit(server.url, LONG)
    wait_training(server.url, job_id)
    for question in ("What is 2 + 2?", "Name a color."):
        assert chat(server.url, question)
    assert status(server.url, job_id)["state"] == "running"
    killed = workers(server.url)
    os.kill(killed[0]["pid"], signal.SIGKILL)  # end it the hard way (the next test's subject)
    wait(server.url, job_id, *FINISHED)


def test_a_failing_job_fails_with_its_reason_and_fires_the_webhook(
    server: LiveServer, receiver: Receiver
):
    folder = Path(server.log).parent / "adapters" / MODEL / "corrupt"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"this is not a safetensors file")
    job_id = submit(server.url, {"examples": [CORRECTION], "config": {"base_adapter": "corrupt"}})
    failed = wait(server.url, job_id, *FINISHED)
    assert failed["state"] == "failed" and failed["error"], failed
    call = receiver.wait_for(job_id)
    assert call["status"] == "failed" and call["error"] == failed["error"]
    assert chat(server.url, "Name a color.")  # the serving loop never stopped


def test_kill_9_of_the_worker(server: LiveServer, receiver: Receiver):
    worker = wait_worker_ready(server.url)
    running = submit(server.url, LONG)
    queued = submit(
        server.url, {"examples": [CORRECTION], "config": {"epochs": 1, "output_name": "after"}}
    )
    wait_training(server.url, running)
    os.kill(worker["pid"], signal.SIGKILL)
    failed = wait(server.url, running, *FINISHED)
    assert failed["state"] == "failed", failed
    assert "training worker stopped unexpectedly (killed by signal 9" in failed["error"]
    assert receiver.wait_for(running)["status"] == "failed"
    assert wait(server.url, queued, *FINISHED)["state"] == "completed"
    assert [w["pid"] for w in workers(server.url)] != [worker["pid"]]
    names = [
        a["name"] for a in httpx.get(f"{server.url}/v1/adapters", timeout=30).json()["available"]
    ]
    assert "after" in names and status(server.url, running)["adapter_name"] not in names


def test_kill_9_of_the_server(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
):
    folder = tmp_path_factory.mktemp("killed")
    first = serve(data_dir, folder, receiver)
    try:
        worker = wait_worker_ready(first.url)
        running = submit(first.url, LONG)
        queued = submit(
            first.url, {"examples": [CORRECTION], "config": {"epochs": 1, "output_name": "later"}}
        )
        wait_training(first.url, running)
        first.process.kill()
        first.process.wait()
        deadline = time.monotonic() + 60
        while _alive(worker["pid"]):  # its stdin closed: the worker leaves at once
            assert time.monotonic() < deadline, "the worker outlived the killed server"
            time.sleep(0.1)
    finally:
        if first.process.poll() is None:
            first.process.kill()
    second = serve(data_dir, folder, receiver)
    try:
        interrupted = status(second.url, running)
        assert interrupted["state"] == "failed", interrupted
        assert "server stopped while this job was running" in interrupted["error"]
        assert wait(second.url, queued, *FINISHED)["state"] == "completed"
        names = [
            a["name"]
            for a in httpx.get(f"{second.url}/v1/adapters", timeout=30).json()["available"]
        ]
        assert "later" in names and interrupted["adapter_name"] not in names
    finally:
        stop_server(second)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except OSError:
        return False
