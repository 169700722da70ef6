"""A gateway serving teacher models (uvicorn, real HTTP) in front of local upstreams that
fail on purpose: retries, fallbacks, cooldowns, the 502/504/400 shapes of each dialect,
streams passed through chunk by chunk, tools, and cost per model and tenant."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from teacher_helpers import Reply, Upstream, refused_url, serve, teacher_settings, upstream

from gateway.engine import ModelSpec
from gateway.settings import ApiKey

TEACHER = ModelSpec(name="teacher", backend="teacher", source="up/m-1")
LOCAL_EXTRAS = ["top_k", "min_p"]
"""What the llama.cpp and Kobold routes send by default besides OpenAI's fields."""


@pytest.fixture
def up() -> Iterator[Upstream]:
    with upstream() as found:
        yield found


@pytest.fixture
def up2() -> Iterator[Upstream]:
    with upstream() as found:
        yield found


def provider(url: str, **kw: Any) -> dict[str, Any]:
    return {"base_url": url, "extra_params": LOCAL_EXTRAS, **kw}


def chat(url: str, **body: Any) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return httpx.post(f"{url}/v1/chat/completions", json={"model": "teacher", **body}, timeout=30)


def content(reply: httpx.Response) -> str:
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


def test_chat_text_and_kobold_are_forwarded(tmp_path: Path, up: Upstream):
    settings = teacher_settings(tmp_path, {"up": provider(up.url)}, [TEACHER])
    with serve(settings) as url:
        assert content(chat(url, temperature=0, max_tokens=5, stop=["END"])) == "Hello world"
        assert up.paths[-1] == "/chat/completions"
        sent = up.requests[-1]
        assert sent["model"] == "m-1" and sent["messages"] == [{"role": "user", "content": "Hi"}]
        assert sent["temperature"] == 0 and sent["max_tokens"] == 5 and sent["stop"] == ["END"]
        assert sent["stream_options"] == {"include_usage": True}
        text = httpx.post(
            f"{url}/v1/completions", json={"model": "teacher", "prompt": "Once"}, timeout=30
        )
        assert text.status_code == 200, text.text
        assert text.json()["choices"][0]["text"] == "Hello world"
        assert text.json()["usage"]["prompt_tokens"] == 7
        assert up.paths[-1] == "/completions" and up.requests[-1]["prompt"] == "Once"
        kobold = httpx.post(
            f"{url}/api/v1/generate",
            json={"prompt": "Ünïcode story", "max_length": 8, "top_k": 20},
            timeout=30,
        )
        assert kobold.status_code == 200, kobold.text
        assert kobold.json()["results"][0]["text"] == "Hello world"
        assert up.requests[-1]["prompt"] == "Ünïcode story"
        assert up.requests[-1]["top_k"] == 20 and up.requests[-1]["max_tokens"] == 8
        native = httpx.post(
            f"{url}/completion", json={"prompt": "Tell", "n_predict": 4}, timeout=30
        )
        assert native.status_code == 200, native.text
        assert native.json()["content"] == "Hello world"
        assert up.requests[-1]["prompt"] == "Tell" and up.requests[-1]["top_k"] == 40


def test_a_stream_passes_through_chunk_by_chunk(tmp_path: Path, up: Upstream):
    """The upstream sends its first chunk, then waits until the test has read it from the
    gateway: a gateway that buffered would never deliver it."""
    gate = threading.Event()
    up.script = [Reply(chunks=["first", " second"], gate=gate)]
    settings = teacher_settings(tmp_path, {"up": provider(up.url)}, [TEACHER])
    with serve(settings) as url, httpx.Client(timeout=30) as client:
        body = {"model": "teacher", "messages": [{"role": "user", "content": "Hi"}]}
        with client.stream(
            "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}
        ) as r:
            assert r.status_code == 200
            seen: list[str] = []
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        seen.append(delta["content"])
                        break
            assert seen == ["first"] and not gate.is_set()
            gate.set()
            for line in lines:
                if line.startswith("data: {"):
                    choices = json.loads(line[6:])["choices"]
                    if choices and choices[0]["delta"].get("content"):
                        seen.append(choices[0]["delta"]["content"])
            assert seen == ["first", " second"]


def test_server_errors_are_retried(tmp_path: Path, up: Upstream):
    up.script = [Reply(status=500), Reply(status=503)]
    settings = teacher_settings(tmp_path, {"up": provider(up.url)}, [TEACHER])
    with serve(settings) as url:
        assert content(chat(url)) == "Hello world"
    assert len(up.requests) == 3


def test_a_429_is_retried_after_retry_after(tmp_path: Path, up: Upstream):
    up.script = [Reply(status=429, message="slow down", headers={"Retry-After": "0.2"})]
    settings = teacher_settings(tmp_path, {"up": provider(up.url)}, [TEACHER])
    with serve(settings) as url:
        assert content(chat(url)) == "Hello world"
    assert len(up.requests) == 2


def test_a_refused_connection_falls_back_to_the_next_deployment(tmp_path: Path, up: Upstream):
    model = ModelSpec(
        name="teacher",
        backend="teacher",
        options={
            "deployments": [{"provider": "down", "model": "m"}],
            "fallbacks": ["up/m-2"],
        },
    )
    providers = {"down": provider(refused_url()), "up": provider(up.url)}
    with serve(teacher_settings(tmp_path, providers, [model], num_retries=1)) as url:
        assert content(chat(url)) == "Hello world"
    assert [r["model"] for r in up.requests] == ["m-2"]


def test_a_failing_deployment_cools_down(tmp_path: Path, up: Upstream, up2: Upstream):
    """Two deployments; the first fails every time. After its first failure every request
    goes to the second for `cooldown_seconds`, although picks go round-robin."""
    up.default = Reply(status=500)
    model = ModelSpec(
        name="teacher",
        backend="teacher",
        options={
            "deployments": [{"provider": "bad", "model": "m"}, {"provider": "good", "model": "m"}]
        },
    )
    providers = {"bad": provider(up.url), "good": provider(up2.url)}
    with serve(teacher_settings(tmp_path, providers, [model], cooldown_seconds=600)) as url:
        for _ in range(5):
            assert content(chat(url)) == "Hello world"
        health = httpx.get(f"{url}/health", timeout=10).json()
    assert len(up.requests) == 1 and len(up2.requests) == 5
    [teacher] = [m for m in health["models"] if m["name"] == "teacher"]
    assert list(teacher["cooling"]) == ["bad/m"]
    assert (teacher["served"], teacher["failed"]) == (5, 0)


ROUTES = {
    "openai": (
        "/v1/chat/completions",
        {"model": "teacher", "messages": [{"role": "user", "content": "Hi"}]},
    ),
    "llamacpp": ("/completion", {"prompt": "Hi", "n_predict": 4}),
    "kobold": ("/api/v1/generate", {"prompt": "Hi", "max_length": 4}),
}


def error_of(family: str, body: dict[str, Any]) -> tuple[str, str]:
    """The message and type of an error body in `family`'s shape."""
    if family == "kobold":
        return body["detail"]["msg"], body["detail"]["type"]
    return body["error"]["message"], body["error"]["type"]


def test_a_server_error_after_retries_is_a_502_in_each_dialect(tmp_path: Path, up: Upstream):
    up.default = Reply(status=500, message="the GPU caught fire")
    settings = teacher_settings(tmp_path, {"up": provider(up.url)}, [TEACHER], num_retries=1)
    with serve(settings) as url:
        for family, (path, body) in ROUTES.items():
            before = len(up.requests)
            reply = httpx.post(url + path, json=body, timeout=30)
            assert reply.status_code == 502, (family, reply.text)
            message, kind = error_of(family, reply.json())
            assert "the GPU caught fire" in message and "`up/m-1` answered 500" in message
            assert kind == {"openai": "upstream_error"}.get(family, "server_error")
            assert len(up.requests) - before == 2, family
        assert reply.json() == {"detail": {"msg": message, "type": "server_error"}}
        native = httpx.post(url + "/completion", json={"prompt": "Hi"}, timeout=30).json()
        assert native["error"]["code"] == 502


def test_a_timeout_is_a_504_in_each_dialect(tmp_path: Path, up: Upstream):
    up.default = Reply(hang=True)
    providers = {"up": provider(up.url, timeout=0.3)}
    settings = teacher_settings(tmp_path, providers, [TEACHER], num_retries=0)
    with serve(settings) as url:
        for family, (path, body) in ROUTES.items():
            reply = httpx.post(url + path, json=body, timeout=30)
            assert reply.status_code == 504, (family, reply.text)
            message, kind = error_of(family, reply.json())
            assert "`up/m-1` did not answer in time" in message and "0.3 s" in message
            assert kind == {"openai": "timeout_error"}.get(family, "server_error")
        openai = httpx.post(url + ROUTES["openai"][0], json=ROUTES["openai"][1], timeout=30)
        assert openai.json()["error"]["code"] == "upstream_timeout"


def test_a_stream_that_breaks_after_its_first_chunk_ends_as_an_error(tmp_path: Path, up: Upstream):
    up.script = [Reply(chunks=["partial", " more"], cut=True)]
    settings = teacher_settings(tmp_path, {"up": provider(up.url)}, [TEACHER])
    with serve(settings) as url:
        reply = chat(url, stream=True)
    assert reply.status_code == 200
    events = [json.loads(x[6:]) for x in reply.text.splitlines() if x.startswith("data: {")]
    texts = [e["choices"][0]["delta"].get("content") for e in events if e.get("choices")]
    assert "partial" in texts
    assert "broke off its stream" in events[-1]["error"]["message"]
    assert len(up.requests) == 1  # a started stream is not retried


def test_fields_the_upstream_lacks_are_a_400_naming_them(tmp_path: Path, up: Upstream):
    providers = {"up": {"base_url": up.url}}
    with serve(teacher_settings(tmp_path, providers, [TEACHER])) as url:
        reply = chat(url, top_k=5, repetition_penalty=1.2)
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert "`top_k`" in error["message"] and "`repetition_penalty`" in error["message"]
        assert error["param"] == "top_k" and error["code"] == "unsupported_parameter"
        kobold = httpx.post(f"{url}/api/v1/generate", json={"prompt": "Hi"}, timeout=30)
        assert kobold.status_code == 400 and "`top_k`" in kobold.json()["detail"]["msg"]
    assert up.requests == []
    dropping = teacher_settings(tmp_path, providers, [TEACHER], drop_unsupported=True)
    with serve(dropping) as url:
        assert content(chat(url, top_k=5)) == "Hello world"
    assert "top_k" not in up.requests[-1]


def test_the_upstreams_400_is_the_clients_400(tmp_path: Path, up: Upstream):
    up.script = [
        Reply(
            status=400,
            error={"error": {"message": "'messages' must not be empty", "param": "messages"}},
        )
    ]
    with serve(teacher_settings(tmp_path, {"up": provider(up.url)}, [TEACHER])) as url:
        reply = chat(url)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert "'messages' must not be empty" in error["message"] and error["param"] == "messages"
    assert len(up.requests) == 1


def test_tool_calls_come_back_as_openai_tool_calls(tmp_path: Path, up: Upstream):
    up.script = [
        Reply(
            chunks=[],
            finish="tool_calls",
            tool_calls=[{"name": "weather", "arguments": {"city": "Oslo"}}],
        )
    ]
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    with serve(teacher_settings(tmp_path, {"up": provider(up.url)}, [TEACHER])) as url:
        reply = chat(url, tools=[tool])
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert up.requests[-1]["tools"] == [tool]


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_cost_and_tokens_per_model_and_tenant(tmp_path: Path, up: Upstream):
    up.default = Reply(usage=(1000, 200))
    keys = [
        ApiKey(key="alice-key-0001", name="alice"),
        ApiKey(key="bob-key-000002", name="bob", scopes=["inference", "admin"]),
    ]
    settings = teacher_settings(
        tmp_path,
        {"up": provider(up.url)},
        [TEACHER],
        host={"api_keys": keys},
        prices={"m-1": {"input": 2.0, "output": 10.0}},
    )

    def as_key(key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    body = {"model": "teacher", "messages": [{"role": "user", "content": "Hi"}]}
    with serve(settings) as url:
        for key in ("alice-key-0001", "alice-key-0001", "bob-key-000002"):
            reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers=as_key(key))
            assert reply.status_code == 200, reply.text
        kobold = httpx.post(
            f"{url}/api/v1/generate", json={"prompt": "Hi"}, headers=as_key("bob-key-000002")
        )
        assert kobold.status_code == 200, kobold.text
        text = httpx.get(f"{url}/metrics", headers=as_key("bob-key-000002")).text
    one = (1000 * 2.0 + 200 * 10.0) / 1e6
    cost = "gateway_cost_usd_total"
    assert metric(text, cost, model="teacher", tenant="alice") == pytest.approx(2 * one)
    assert metric(text, cost, model="teacher", tenant="bob") == pytest.approx(2 * one)
    tokens = "gateway_tokens_total"
    assert metric(text, tokens, model="teacher", tenant="alice", kind="prompt") == 2000
    assert metric(text, tokens, model="teacher", tenant="alice", kind="completion") == 400
    assert metric(text, tokens, model="teacher", tenant="bob", kind="completion") == 400
    assert metric(text, "gateway_generated_tokens_total", model="teacher") == 800
