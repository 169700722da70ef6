"""Wire format of every OpenAI route, against the deterministic EchoBackend."""

from __future__ import annotations

import base64
import json
import struct

import pytest

CHAT = "/v1/chat/completions"


def chat(text: str = "Hello there", **extra: object) -> dict[str, object]:
    return {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}


def sse_events(body: str) -> list[object]:
    events = []
    for block in body.strip().split("\n\n"):
        assert block.startswith("data: "), block
        payload = block.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_models_list(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]][:1] == ["echo"]
    assert body["data"][0]["object"] == "model"
    assert client.get("/v1/models/echo").json()["id"] == "echo"
    assert client.get("/v1/models/nope").status_code == 404


def test_chat_completion_shape(client):
    response = client.post(CHAT, json=chat())
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "echo"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    usage = body["usage"]
    assert usage["completion_tokens"] == len(b"Hello there")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    timings = body["timings"]
    assert timings["predicted_n"] == usage["completion_tokens"]
    assert timings["prompt_n"] + timings["cache_n"] == usage["prompt_tokens"]
    assert {"prompt_ms", "predicted_ms", "predicted_per_second"} <= set(timings)


def test_chat_content_parts_and_developer_role(client):
    messages = [
        {"role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "cd"}],
        },
    ]
    body = client.post(CHAT, json={"model": "echo", "messages": messages}).json()
    assert body["choices"][0]["message"]["content"] == "abcd"


def test_chat_image_part_is_refused(client):
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    response = client.post(
        CHAT, json={"model": "echo", "messages": [{"role": "user", "content": [part]}]}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_limits_and_reports_length(client, field):
    body = client.post(CHAT, json=chat(**{field: 3})).json()
    assert body["choices"][0]["message"]["content"] == "Hel"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_stop_is_not_emitted(client):
    body = client.post(CHAT, json=chat("one two three", stop=[" thr", "zzz"])).json()
    assert body["choices"][0]["message"]["content"] == "one two"
    assert body["choices"][0]["finish_reason"] == "stop"
    body = client.post(CHAT, json=chat("one two three", stop="two")).json()
    assert body["choices"][0]["message"]["content"] == "one "


def test_n_choices(client):
    body = client.post(CHAT, json=chat("hi", n=3)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in body["choices"]} == {"hi"}
    assert body["usage"]["completion_tokens"] == 6


def test_logprobs(client):
    body = client.post(CHAT, json=chat("ab", logprobs=True, top_logprobs=2)).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["a", "b"]
    assert content[0]["bytes"] == [97]
    assert [t["token"] for t in content[0]["top_logprobs"]] == ["a", "b"]
    assert content[0]["top_logprobs"][0]["logprob"] >= content[0]["top_logprobs"][1]["logprob"]


def test_top_logprobs_needs_logprobs(client):
    response = client.post(CHAT, json=chat(top_logprobs=2))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "top_logprobs"


def test_chat_stream(client):
    response = client.post(CHAT, json=chat("Hi!", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hi!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks)
    assert chunks[-1]["timings"]["predicted_n"] == len(b"Hi!")
    assert all("timings" not in c for c in chunks[:-1])


def test_chat_stream_include_usage(client):
    response = client.post(
        CHAT, json=chat("Hi!", stream=True, stream_options={"include_usage": True}, n=2)
    )
    events = sse_events(response.text)
    last = events[-2]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 6
    assert last["timings"]["predicted_n"] == 6
    finishes = [c for c in events[:-2] if c["choices"] and c["choices"][0]["finish_reason"]]
    assert sorted(c["choices"][0]["index"] for c in finishes) == [0, 1]


def test_completions(client):
    body = client.post("/v1/completions", json={"model": "echo", "prompt": "abc"}).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "abc"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_completions_list_prompt_token_prompt_and_echo(client):
    body = client.post(
        "/v1/completions", json={"model": "echo", "prompt": ["ab", "cd"], "echo": True}
    ).json()
    assert [c["text"] for c in body["choices"]] == ["abab", "cdcd"]
    assert body["usage"]["prompt_tokens"] == 4
    body = client.post("/v1/completions", json={"model": "echo", "prompt": [104, 105]}).json()
    assert body["choices"][0]["text"] == "hi"
    body = client.post("/v1/completions", json={"model": "echo", "prompt": [[104], [105]]}).json()
    assert [c["text"] for c in body["choices"]] == ["h", "i"]


def test_completions_default_max_tokens_is_16(client):
    body = client.post("/v1/completions", json={"model": "echo", "prompt": "x" * 40}).json()
    assert body["choices"][0]["text"] == "x" * 16
    assert body["choices"][0]["finish_reason"] == "length"


def test_completions_logprobs(client):
    body = client.post(
        "/v1/completions", json={"model": "echo", "prompt": "ab", "logprobs": 2, "echo": True}
    ).json()
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["a", "b"]
    assert logprobs["text_offset"] == [2, 3]
    assert list(logprobs["top_logprobs"][0]) == ["a", "b"]


def test_completions_stream(client):
    response = client.post(
        "/v1/completions",
        json={
            "model": "echo",
            "prompt": "hey",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
    assert text == "hey"
    assert events[-2]["usage"]["completion_tokens"] == 3


def test_embeddings(client):
    body = client.post("/v1/embeddings", json={"model": "echo", "input": ["a cat", "a dog"]}).json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 8
    assert body["usage"] == {"prompt_tokens": 10, "total_tokens": 10}
    single = client.post("/v1/embeddings", json={"model": "echo", "input": "a cat"}).json()
    assert single["data"][0]["embedding"] == body["data"][0]["embedding"]


def test_embeddings_base64(client):
    floats = client.post("/v1/embeddings", json={"model": "echo", "input": "a cat"}).json()
    encoded = client.post(
        "/v1/embeddings", json={"model": "echo", "input": "a cat", "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    values = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert values == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/embeddings", {"model": "echo", "input": []}, "input"),
        ("/v1/embeddings", {"model": "echo", "input": ""}, "input"),
        ("/v1/embeddings", {"model": "echo", "input": "x", "dimensions": 4}, "dimensions"),
        ("/v1/embeddings", {"model": "echo", "input": [1, "a"]}, "input"),
        ("/v1/completions", {"model": "echo", "prompt": []}, "prompt"),
        ("/v1/completions", {"model": "echo", "prompt": "x", "suffix": "y"}, "suffix"),
        (CHAT, {"model": "echo", "messages": []}, "messages"),
        (CHAT, chat(max_tokens=-5), "max_tokens"),
        (CHAT, chat(max_tokens="ten"), "max_tokens"),
        (CHAT, chat(temperature=-1), "temperature"),
        (CHAT, chat(temperature=3), "temperature"),
        (CHAT, chat(top_p=1.5), "top_p"),
        (CHAT, chat(n=0), "n"),
        (CHAT, chat(logit_bias={"abc": 1}), "logit_bias"),
        (CHAT, chat(logit_bias={"999999": 1}), "logit_bias"),
        (
            CHAT,
            {"model": "echo", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        (CHAT, {"model": "echo"}, "messages"),
        (CHAT, {"model": 7, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_bad_bodies_name_the_field(client, path, body, param):
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/v1/embeddings"])
def test_malformed_json(client, path):
    response = client.post(
        path, content=b'{"model": "echo", ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat() | {"model": "missing"}),
        ("/v1/completions", {"model": "missing", "prompt": "x"}),
        ("/v1/embeddings", {"model": "missing", "input": "x"}),
        (CHAT, chat(stream=True) | {"model": "missing"}),
    ],
)
def test_unknown_model_is_404(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "missing" in error["message"]


def test_backend_failure_is_a_500_with_a_message_and_no_traceback(client, monkeypatch):
    from gateway.testing.echo import EchoBackend

    async def broken(self, request):
        raise RuntimeError("the weights are on fire")
        yield  # pragma: no cover

    monkeypatch.setattr(EchoBackend, "generate", broken)
    response = client.post(CHAT, json=chat())
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "the weights are on fire" in error["message"]
    assert "Traceback" not in response.text


def test_unknown_fields_are_ignored(client):
    response = client.post(CHAT, json=chat("ok", vendor_extra={"x": 1}, parallel_tool_calls=False))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "ok"


@pytest.mark.parametrize("path", ["/v1/audio/speech", "/v1/audio/transcriptions"])
def test_absent_audio_is_a_4xx_that_clients_do_not_retry(client, path):
    response = client.post(path, json={"model": "tts-1", "input": "hi", "voice": "alloy"})
    assert response.status_code == 404
    assert response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["code"] == "capability_not_available" and "plugin" in error["message"]


def test_the_openai_sdk_does_not_retry_absent_audio(client):
    import openai

    sent: list[str] = []
    client.event_hooks["request"].append(lambda request: sent.append(request.url.path))
    sdk = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="x", http_client=client)
    with pytest.raises(openai.NotFoundError, match="text-to-speech"):
        sdk.audio.speech.create(model="tts-1", input="hello", voice="alloy")
    assert sent == ["/v1/audio/speech"]


@pytest.mark.parametrize("path", [CHAT, "/v1/completions"])
def test_adapters_are_read_not_silently_ignored(client, path):
    body = chat() if path == CHAT else {"model": "echo", "prompt": "x"}
    response = client.post(path, json={**body, "adapters": [{"name": "default", "scale": 0.7}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "adapters"
