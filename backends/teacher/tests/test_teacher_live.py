"""Live: the real `openai` SDK against a `gateway serve` whose teacher model is a second
`gateway serve` process serving the real default model (SmolLM2-135M-Instruct), which
wants an API key that the teacher reads from the environment.

Greedy answers through the teacher must be the student's own answers, word for word:
chat, streamed chat, and a Kobold generate (forwarded as a text completion).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live import LiveServer, start_server, stop_server
from openai import OpenAI

MODEL = "smollm2-135m-instruct"
STUDENT_KEY = "student-secret-key"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def student(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("student") / "server.log"
    env = {"GATEWAY_DATA_DIR": str(data_dir), "GATEWAY_API_KEYS": f"{STUDENT_KEY}:inference"}
    server = start_server(["--model", MODEL], env, log)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def teacher(student: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("teacher")
    config = folder / "gateway.toml"
    config.write_text(
        f"""
[[models]]
name = "teacher"
backend = "teacher"
source = "student/{MODEL}"

[teacher.providers.student]
base_url = "{student.url}/v1"
api_key_env = "TEACHER_LIVE_STUDENT_KEY"
extra_params = ["top_k", "min_p", "repetition_penalty", "ignore_eos"]
timeout = 300
"""
    )
    env = {"GATEWAY_DATA_DIR": str(folder), "TEACHER_LIVE_STUDENT_KEY": STUDENT_KEY}
    server = start_server(["--config", str(config)], env, folder / "server.log")
    yield server
    stop_server(server)


def sdk(url: str, key: str = "unused") -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)


def test_chat_through_the_teacher_is_the_students_answer(student: LiveServer, teacher: LiveServer):
    direct = sdk(student.url, STUDENT_KEY).chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=24
    )
    proxied = sdk(teacher.url).chat.completions.create(
        model="teacher", messages=QUESTION, temperature=0, max_tokens=24
    )
    answer = proxied.choices[0].message.content
    assert answer is not None and "Paris" in answer
    assert answer == direct.choices[0].message.content
    assert proxied.model == "teacher"
    assert proxied.usage is not None and direct.usage is not None
    assert proxied.usage.prompt_tokens == direct.usage.prompt_tokens
    assert proxied.usage.completion_tokens == direct.usage.completion_tokens


def test_streamed_chat_through_the_teacher(student: LiveServer, teacher: LiveServer):
    direct = sdk(student.url, STUDENT_KEY).chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=24
    )
    stream = sdk(teacher.url).chat.completions.create(
        model="teacher",
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(deltas) > 1  # streamed piece by piece, not in one block
    assert "".join(deltas) == direct.choices[0].message.content
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens == direct.usage.completion_tokens  # type: ignore[union-attr]


def test_kobold_generate_through_the_teacher(student: LiveServer, teacher: LiveServer):
    prompt = "The capital of France is"
    reply = httpx.post(
        f"{teacher.url}/api/v1/generate",
        json={"prompt": prompt, "max_length": 8, "temperature": 0},
        timeout=300,
    )
    assert reply.status_code == 200, reply.text
    text = reply.json()["results"][0]["text"]
    direct = sdk(student.url, STUDENT_KEY).completions.create(
        model=MODEL, prompt=prompt, max_tokens=8, temperature=0
    )
    assert text and text == direct.choices[0].text
