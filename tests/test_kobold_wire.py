"""Wire format of the KoboldCpp family, against the EchoBackend, validated against the
schemas of koboldcpp-openapi.json where it defines them."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from litestar.testing import TestClient
from live import start_server, stop_server

from gateway.app import create_app
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.settings import KoboldSettings, Settings

SPEC = Path(__file__).with_name("data") / "koboldcpp-openapi.json"
"""KoboldCpp's OpenAPI document (version 2025.06.03), as published."""


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return json.loads(SPEC.read_text())


def validate(spec: dict[str, Any], method: str, path: str, body: Any) -> None:
    """Validate `body` against the 200 response schema the spec gives `method path`."""
    operation = spec["paths"][path][method]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": spec["components"]})


def request_schema(spec: dict[str, Any], path: str) -> dict[str, Any]:
    operation = spec["paths"][path]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    return {**schema, "components": spec["components"]}


def test_generate_validates_both_ways(client, spec):
    body = {"prompt": "Hello", "max_length": 3, "temperature": 0.7, "sampler_seed": 5}
    jsonschema.validate(body, request_schema(spec, "/api/v1/generate"))
    for path in ("/api/v1/generate", "/api/latest/generate"):
        reply = client.post(path, json=body).json()
        validate(spec, "post", "/api/v1/generate", reply)
        assert reply["results"][0]["text"] == "Hel"
        assert reply["results"][0]["finish_reason"] == "length"


def test_memory_stop_sequences_and_trim_stop(client):
    body = {"prompt": " there friend", "memory": "Hi", "stop_sequence": [" fr"]}
    trimmed = client.post("/api/v1/generate", json=body).json()["results"][0]
    assert trimmed["text"] == "Hi there" and trimmed["finish_reason"] == "stop"
    kept = client.post("/api/v1/generate", json=body | {"trim_stop": False}).json()
    assert kept["results"][0]["text"] == "Hi there fr"


def test_prompt_is_cut_from_the_start_to_fit_the_context(client):
    body = {"prompt": "abcdefghij", "memory": "M", "max_context_length": 8, "max_length": 3}
    text = client.post("/api/v1/generate", json=body).json()["results"][0]["text"]
    # 8 tokens of context - 3 to generate - 1 of memory: the last 4 prompt tokens stay.
    # The echo model repeats its prompt, 3 tokens of it.
    assert text == "Mgh"
    too_small = client.post("/api/v1/generate", json=body | {"max_context_length": 4})
    assert too_small.status_code == 400


def test_config_and_info_routes(client, spec):
    assert client.get("/api/v1/model").json() == {"result": "koboldcpp/echo"}
    assert client.get("/api/latest/model").json() == {"result": "koboldcpp/echo"}
    assert client.get("/api/v1/info/version").json() == {"result": "1.2.5"}
    for path in ("/api/v1/config/max_context_length", "/api/extra/true_max_context_length"):
        reply = client.get(path).json()
        validate(spec, "get", path, reply)
        assert reply == {"value": 4096}
    reply = client.get("/api/v1/config/max_length").json()
    validate(spec, "get", "/api/v1/config/max_length", reply)
    version = client.get("/api/extra/version").json()
    validate(spec, "get", "/api/extra/version", version)
    assert version["result"] == "KoboldCpp"


def test_perf_counts_generations(client, spec):
    client.post("/api/v1/generate", json={"prompt": "abc", "sampler_seed": 9})
    perf = client.get("/api/extra/perf").json()
    validate(spec, "get", "/api/extra/perf", perf)
    assert perf["total_gens"] == 1 and perf["last_seed"] == 9
    assert perf["last_token_count"] == 3 and perf["stop_reason"] == 1 and perf["idle"] == 1


def test_stream_events(client):
    response = client.post("/api/extra/generate/stream", json={"prompt": "abc"})
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.strip().split("\n\n")
    assert all(b.startswith("event: message\ndata: ") for b in blocks)
    events = [json.loads(b.split("data: ", 1)[1]) for b in blocks]
    assert "".join(e["token"] for e in events) == "abc"
    assert events[-1]["finish_reason"] == "stop"


def test_check_abort_and_logprobs_by_genkey(client, spec):
    body = {"prompt": "abc", "genkey": "KCPP1", "logprobs": True}
    client.post("/api/v1/generate", json=body)
    check = client.post("/api/extra/generate/check", json={"genkey": "KCPP1"}).json()
    validate(spec, "post", "/api/extra/generate/check", check)
    assert check == {"results": [{"text": "abc"}]}
    assert client.get("/api/extra/generate/check").json() == {"results": [{"text": "abc"}]}
    unknown = client.post("/api/extra/generate/check", json={"genkey": "nope"}).json()
    assert unknown == {"results": [{"text": ""}]}
    logprobs = client.post("/api/extra/last_logprobs", json={"genkey": "KCPP1"}).json()
    validate(spec, "post", "/api/extra/last_logprobs", logprobs)
    assert [t["token"] for t in logprobs["logprobs"]["content"]] == ["a", "b", "c"]
    done = client.post("/api/extra/abort", json={"genkey": "KCPP1"}).json()
    validate(spec, "post", "/api/extra/abort", done)
    assert done["success"] is False  # already finished


def test_tokencount_detokenize_json_to_grammar(client, spec):
    count = client.post("/api/extra/tokencount", json={"prompt": "hey"}).json()
    validate(spec, "post", "/api/extra/tokencount", count)
    assert count == {"value": 3, "ids": [104, 101, 121]}
    assert client.post("/api/extra/tokenize", json={"prompt": "hey"}).json() == count
    text = client.post("/api/extra/detokenize", json={"ids": [104, 105]}).json()
    validate(spec, "post", "/api/extra/detokenize", text)
    assert text == {"result": "hi", "success": True}
    grammar = client.post("/api/extra/json_to_grammar", json={"schema": {"type": "object"}}).json()
    assert grammar["success"] is True and "%json" in grammar["result"]


def test_embeddings(client):
    body = client.post("/api/extra/embeddings", json={"model": "echo", "input": "x"}).json()
    assert body["object"] == "list" and len(body["data"][0]["embedding"]) == 8


def test_save_load_list(client, spec):
    saved = client.post(
        "/api/extra/data/save",
        json={"slot": "1", "title": "My story", "format": "kcpp_lzma_b64", "data": "QUJD"},
    ).json()
    validate(spec, "post", "/api/extra/data/save", saved)
    loaded = client.post("/api/extra/data/load", json={"slot": "1"}).json()
    validate(spec, "post", "/api/extra/data/load", loaded)
    assert loaded["data"] == "QUJD" and loaded["title"] == "My story"
    titles = client.post("/api/extra/data/list").json()
    validate(spec, "post", "/api/extra/data/list", titles)
    assert titles[1] == "My story" and titles[0] == "" and len(titles) == 8
    empty = client.post("/api/extra/data/load", json={"slot": 2}).json()
    assert empty["success"] is False
    assert client.post("/api/extra/data/save", json={"slot": 99, "data": "x"}).status_code == 400


def test_multiplayer_turns(client, spec):
    status = client.post("/api/extra/multiplayer/status", json={"sender": "A"}).json()
    validate(spec, "post", "/api/extra/multiplayer/status", status)
    assert status["turn_major"] == "0"
    first = client.post(
        "/api/extra/multiplayer/setstory",
        json={"full_update": True, "sender": "A", "data_format": "kcpp_lzma_b64", "data": "s1"},
    ).json()
    validate(spec, "post", "/api/extra/multiplayer/setstory", first)
    minor = client.post(
        "/api/extra/multiplayer/setstory", json={"full_update": False, "data": "s2"}
    ).json()
    assert (first["turn_major"], minor["turn_major"], minor["turn_minor"]) == ("1", "1", "1")
    story = client.post("/api/extra/multiplayer/getstory").json()
    assert story["data"] == "s2" and story["data_format"] == ""


def test_story_data_survives_a_restart(tmp_path):
    settings = Settings(models=[ModelSpec(name="echo", backend="echo")], data_dir=str(tmp_path))
    with TestClient(create_app(gateway=Gateway(settings))) as first:
        first.post("/api/extra/data/save", json={"slot": 3, "title": "Kept", "data": "DATA"})
        first.post("/api/extra/multiplayer/setstory", json={"data": "shared", "sender": "A"})
    assert (tmp_path / "gateway.db").is_file()
    with TestClient(create_app(gateway=Gateway(settings))) as second:
        loaded = second.post("/api/extra/data/load", json={"slot": 3}).json()
        assert loaded["data"] == "DATA" and loaded["title"] == "Kept"
        story = second.post("/api/extra/multiplayer/getstory").json()
        assert story["data"] == "shared" and story["turn_major"] == 1


def test_unprovided_capabilities_are_501_naming_them(client):
    for method, path, capability in [
        ("GET", "/sdapi/v1/sd-models", "image generation"),
        ("POST", "/sdapi/v1/txt2img", "image generation"),
        ("POST", "/api/extra/transcribe", "transcription"),
        ("POST", "/api/extra/tts", "text-to-speech"),
        ("POST", "/api/extra/websearch", "web search"),
    ]:
        response = client.request(method, path, json={})
        assert response.status_code == 501
        message = response.json()["detail"]["msg"]
        assert capability in message and "plugin" in message


def test_serviceinfo_and_preloadstory(make_client, tmp_path):
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"prompt": "Once", "memory": "", "authorsnote": "", "actions": []}))
    client = make_client(kobold=KoboldSettings(preload_story=str(story)))
    assert client.get("/api/extra/preloadstory").json()["prompt"] == "Once"
    info = client.get("/.well-known/serviceinfo").json()
    assert info["api"]["koboldai"]["rel_url"] == "/api"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": 3},
        {"prompt": "x", "temperature": -1},
        {"prompt": "x", "top_p": 2},
        {"prompt": "x", "max_length": 0},
        {"prompt": "x", "sampler_order": [0, 0, 1]},
        {"prompt": "x", "sampler_order": [7]},
        {"prompt": "x", "logit_bias": {"abc": 1}},
        {"prompt": "x", "mirostat": 3},
        {"prompt": "x", "images": ["aGk="]},
    ],
)
def test_bad_generate_bodies_are_400_in_kobold_shape(client, body):
    response = client.post("/api/v1/generate", json=body)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail["type"] == "bad_input" and detail["msg"]


def test_busy_beyond_the_queue_limit_is_503(tmp_path):
    config = tmp_path / "echo.toml"
    config.write_text(
        '[kobold]\nqueue_limit = 1\n[[models]]\nname = "echo"\nbackend = "echo"\n'
        "options = { delay = 0.05 }\n"
    )
    server = start_server(["--config", str(config)], {}, tmp_path / "server.log", timeout=60)
    try:
        url = f"{server.url}/api/v1/generate"
        slow = threading.Thread(
            target=httpx.post, args=(url,), kwargs={"json": {"prompt": "x" * 30}, "timeout": 30}
        )
        slow.start()
        for _ in range(1000):  # wait until the slow generation holds the only place
            if httpx.get(f"{server.url}/api/extra/perf").json()["idle"] == 0:
                break
        busy = []
        while slow.is_alive():
            response = httpx.post(url, json={"prompt": "y"})
            if response.status_code == 503:
                busy.append(response.json())
        slow.join()
        assert busy and busy[0]["detail"]["type"] == "service_unavailable"
    finally:
        stop_server(server)


def test_polling_sees_growing_text_abort_stops_and_genkeys_do_not_mix(tmp_path):
    config = tmp_path / "echo.toml"
    config.write_text('[[models]]\nname = "echo"\nbackend = "echo"\noptions = { delay = 0.03 }\n')
    server = start_server(["--config", str(config)], {}, tmp_path / "server.log", timeout=60)
    results: dict[str, Any] = {}

    def generate(key: str, prompt: str) -> None:
        body = {"prompt": prompt, "genkey": key, "max_length": len(prompt)}
        results[key] = httpx.post(f"{server.url}/api/v1/generate", json=body, timeout=30).json()

    try:
        threads = [
            threading.Thread(target=generate, args=("KA", "A" * 60)),
            threading.Thread(target=generate, args=("KB", "B" * 60)),
        ]
        for thread in threads:
            thread.start()
        seen: dict[str, list[str]] = {"KA": [], "KB": []}
        while all(thread.is_alive() for thread in threads):
            for key in seen:
                check = httpx.post(f"{server.url}/api/extra/generate/check", json={"genkey": key})
                seen[key].append(check.json()["results"][0]["text"])
            if len(seen["KB"][-1]) > 10:
                abort = httpx.post(f"{server.url}/api/extra/abort", json={"genkey": "KB"})
                assert abort.json()["success"] is True
                break
        for thread in threads:
            thread.join()
        assert set("".join(seen["KA"])) <= {"A"} and set("".join(seen["KB"])) <= {"B"}
        lengths = [len(text) for text in seen["KA"]]
        assert lengths == sorted(lengths) and len(set(lengths)) > 2  # growing partial text
        assert results["KA"]["results"][0]["text"] == "A" * 60
        aborted = results["KB"]["results"][0]
        assert aborted["finish_reason"] == "abort" and 10 < len(aborted["text"]) < 60
    finally:
        stop_server(server)


def test_admin_is_off_unless_enabled_and_reload_config_switches_models(make_client, tmp_path):
    off = make_client()
    assert off.get("/api/admin/list_options").status_code == 501
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "other.toml").write_text('[[models]]\nname = "other"\nbackend = "echo"\n')
    client = make_client(kobold=KoboldSettings(admin=True, admin_dir=str(configs)))
    assert client.get("/api/admin/list_options").json() == ["other.toml"]
    bad = client.post("/api/admin/reload_config", json={"filename": "../x.toml"})
    assert bad.status_code == 400
    reloaded = client.post("/api/admin/reload_config", json={"filename": "other.toml"})
    assert reloaded.json() == {"success": True}
    for _ in range(100):
        models = [m["id"] for m in client.get("/v1/models").json()["data"]]
        if "other" in models:
            break
    assert "other" in models and "echo" not in models
    assert client.get("/api/v1/model").json() == {"result": "koboldcpp/other"}


def test_shutdown_only_from_loopback(client, tmp_path):
    refused = client.post("/api/extra/shutdown")  # the test client is not a loopback address
    assert refused.status_code == 403
    config = tmp_path / "echo.toml"
    config.write_text('[[models]]\nname = "echo"\nbackend = "echo"\n')
    server = start_server(["--config", str(config)], {}, tmp_path / "server.log", timeout=60)
    try:
        assert httpx.post(f"{server.url}/api/extra/shutdown").json() == {"success": True}
        assert server.process.wait(timeout=30) is not None
    finally:
        stop_server(server)


def test_a_refused_request_gives_its_place_back(make_client):
    client = make_client(kobold=KoboldSettings(queue_limit=1))
    for _ in range(3):
        assert (
            client.post("/api/v1/generate", json={"prompt": "x", "images": ["aGk="]}).status_code
            == 400
        )
        stream = client.post(
            "/api/extra/generate/stream", json={"prompt": "x", "sampler_order": [9]}
        )
        assert stream.status_code == 400
    assert client.post("/api/v1/generate", json={"prompt": "ok"}).status_code == 200
    assert client.post("/api/extra/generate/stream", json={"prompt": "ok"}).status_code == 200
    assert client.get("/api/extra/perf").json()["idle"] == 1
