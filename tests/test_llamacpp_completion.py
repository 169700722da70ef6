"""/completion's request and answer fields as llama-server's README documents them, on the
deterministic EchoBackend (one token per UTF-8 byte; it answers with its prompt)."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.engine import ModelSpec
from gateway.errors import ContextExceeded
from gateway.routes.llamacpp.completion import PING, indent_cut, with_pings
from gateway.testing.echo import EchoBackend


def events(body: str) -> list[dict]:
    return [
        json.loads(block.removeprefix("data: "))
        for block in body.strip().split("\n\n")
        if block.startswith("data: ")
    ]


ANSWER_FIELDS = {
    "index",
    "content",
    "tokens",
    "id_slot",
    "stop",
    "model",
    "tokens_predicted",
    "tokens_evaluated",
    "generation_settings",
    "prompt",
    "has_new_line",
    "truncated",
    "stop_type",
    "stopping_word",
    "tokens_cached",
    "timings",
}
SETTINGS_FIELDS = {
    "n_predict", "seed", "temperature", "dynatemp_range", "dynatemp_exponent", "top_k",
    "top_p", "min_p", "top_n_sigma", "xtc_probability", "xtc_threshold", "typical_p",
    "repeat_last_n", "repeat_penalty", "presence_penalty", "frequency_penalty",
    "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n",
    "dry_sequence_breakers", "mirostat", "mirostat_tau", "mirostat_eta", "stop",
    "max_tokens", "n_keep", "n_discard", "ignore_eos", "stream", "logit_bias", "n_probs",
    "min_keep", "grammar", "samplers", "speculative.n_max", "speculative.n_min",
    "speculative.p_min", "timings_per_token", "post_sampling_probs", "lora", "n_ctx", "model",
    "chat_format", "reasoning_format", "reasoning_in_content", "generation_prompt",
}  # fmt: skip


def test_readme_curl_example(client):
    """The README's own example, verbatim."""
    body = {"prompt": "Building a website can be done in 10 simple steps:", "n_predict": 128}
    answer = client.post("/completion", json=body).json()
    assert set(answer) == ANSWER_FIELDS
    assert answer["content"] == body["prompt"] and answer["stop_type"] == "eos"
    assert answer["prompt"] == body["prompt"]
    assert answer["tokens_evaluated"] == len(body["prompt"])
    assert answer["generation_settings"]["n_predict"] == 128
    assert set(answer["generation_settings"]) >= SETTINGS_FIELDS


SENT = {
    "temperature": 0.5,
    "dynatemp_range": 0.1,
    "dynatemp_exponent": 1.5,
    "top_k": 7,
    "top_p": 0.8,
    "min_p": 0.1,
    "top_n_sigma": 1.5,
    "xtc_probability": 0.2,
    "xtc_threshold": 0.3,
    "typical_p": 0.9,
    "repeat_last_n": 32,
    "repeat_penalty": 1.1,
    "presence_penalty": 0.2,
    "frequency_penalty": 0.3,
    "dry_multiplier": 0.8,
    "dry_base": 2.0,
    "dry_allowed_length": 3,
    "dry_penalty_last_n": 128,
    "dry_sequence_breakers": ["\n", "."],
    "mirostat": 2,
    "mirostat_tau": 4.0,
    "mirostat_eta": 0.2,
    "seed": 42,
    "stop": ["zz"],
    "n_predict": 5,
    "n_keep": 4,
    "n_discard": 2,
    "n_probs": 3,
    "min_keep": 2,
    "grammar": 'root ::= "a"*',
    "timings_per_token": True,
    "post_sampling_probs": True,
    "stream": False,
}


def test_generation_settings_are_what_was_sent(client):
    settings = client.post("/completion", json={"prompt": "abc", **SENT}).json()[
        "generation_settings"
    ]
    for key, value in SENT.items():
        assert settings[key] == value, key
    assert settings["max_tokens"] == 5 and settings["n_ctx"] == 4096
    assert settings["model"] == "echo" and settings["lora"] == []


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ({}, {"seed": 4294967295, "dry_penalty_last_n": 4096, "n_predict": -1}),
        ({"seed": -1, "repeat_last_n": -1}, {"seed": 4294967295, "repeat_last_n": 4096}),
        ({"dry_base": 0.5}, {"dry_base": 1.75}),
        ({"samplers": "kypmt"}, {"samplers": ["top_k", "typ_p", "top_p", "min_p", "temperature"]}),
        ({"samplers": ["top_k", "typical_p"]}, {"samplers": ["top_k", "typ_p"]}),
        ({"max_tokens": 2}, {"n_predict": 2, "max_tokens": 2}),
        ({"temperature": -1}, {"temperature": -1}),
        ({"stream": True}, {"stream": True}),
    ],
)
def test_generation_settings_resolve_as_llama_server_does(client, sent, shown):
    body = {"prompt": "abc", **sent}
    text = client.post("/completion", json=body).text
    answer = events(text)[-1] if sent.get("stream") else json.loads(text)
    for key, value in shown.items():
        assert answer["generation_settings"][key] == value, key


def test_logit_bias_in_settings_as_token_pairs(client):
    settings = client.post(
        "/completion", json={"prompt": "x", "logit_bias": [[120, 1.5], ["ab", False]]}
    ).json()["generation_settings"]
    assert settings["logit_bias"] == [
        {"bias": 1.5, "token": 120},
        {"bias": None, "token": 97},
        {"bias": None, "token": 98},
    ]
    as_object = client.post("/completion", json={"prompt": "x", "logit_bias": {"98": -2}}).json()
    assert as_object["generation_settings"]["logit_bias"] == [{"bias": -2.0, "token": 98}]


def test_ignore_eos_bans_the_end_tokens_in_logit_bias(client, monkeypatch):
    monkeypatch.setattr(EchoBackend, "end_tokens", lambda self: [0, 3])
    settings = client.post(
        "/completion", json={"prompt": "x", "ignore_eos": True, "logit_bias": [[5, 1.0]]}
    ).json()["generation_settings"]
    assert settings["ignore_eos"] is True
    assert settings["logit_bias"] == [
        {"bias": 1.0, "token": 5},
        {"bias": None, "token": 0},
        {"bias": None, "token": 3},
    ]
    plain = client.post("/completion", json={"prompt": "x"}).json()["generation_settings"]
    assert plain["logit_bias"] == []


def test_several_prompts_answer_a_list(client):
    body = {"prompt": ["ab", [99, "d"], {"prompt_string": "ef"}], "return_tokens": True}
    answers = client.post("/completion", json=body).json()
    assert [a["index"] for a in answers] == [0, 1, 2]
    assert [a["content"] for a in answers] == ["ab", "cd", "ef"]
    assert answers[1]["tokens"] == [99, 100]


def test_n_cmpl_completes_each_prompt_n_times(client):
    answers = client.post("/completion", json={"prompt": ["ab", "cd"], "n_cmpl": 2}).json()
    assert [(a["index"], a["content"]) for a in answers] == [
        (0, "ab"),
        (1, "ab"),
        (2, "cd"),
        (3, "cd"),
    ]
    too_many = client.post("/completion", json={"prompt": "x", "n_cmpl": 3})
    assert too_many.status_code == 400
    assert (
        "n_cmpl cannot be greater than the number of slots" in too_many.json()["error"]["message"]
    )


def test_multimodal_prompt_is_refused_without_multimodal_support(client):
    body = {"prompt": {"prompt_string": "<__media__> what?", "multimodal_data": ["aGk="]}}
    response = client.post("/completion", json=body)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": 400,
            "message": "Multimodal data provided, but model does not support multimodal requests.",
            "type": "invalid_request_error",
        }
    }
    listed = client.post("/completion", json={"prompt": ["a", body["prompt"]]})
    assert listed.status_code == 400


def test_processed_prompt_and_flags(client):
    answer = client.post("/completion", json={"prompt": [72, "i\nyo"], "n_predict": 10}).json()
    assert answer["prompt"] == "Hi\nyo" and answer["tokens_evaluated"] == 5
    assert answer["has_new_line"] is True and answer["truncated"] is False
    assert answer["id_slot"] == -1 and answer["stopping_word"] == ""
    assert "completion_probabilities" not in answer


def test_streaming_events(client):
    body = {"prompt": "ab", "stream": True, "n_probs": 1, "return_progress": True}
    chunks = events(client.post("/completion", json=body).text)
    progress, *partials, final = chunks
    assert progress["prompt_progress"]["total"] == progress["prompt_progress"]["processed"] == 2
    assert [p["content"] for p in partials] == ["a", "b"]
    assert [p["tokens"] for p in partials] == [[97], [98]]  # ids even without return_tokens
    for partial in partials:
        assert partial["stop"] is False and partial["tokens_evaluated"] == 2
        assert partial["completion_probabilities"][0]["id"] == partial["tokens"][0]
    assert final["stop"] is True and final["content"] == "" and final["tokens"] == []
    assert "completion_probabilities" not in final
    assert set(final) == ANSWER_FIELDS and final["tokens_predicted"] == 2


def test_streamed_stop_word_tail_comes_before_the_final_event(client):
    body = {"prompt": "abc def", "stop": [" d"], "stream": True}
    *partials, final = events(client.post("/completion", json=body).text)
    assert "".join(p["content"] for p in partials) == "abc"
    assert final["stop_type"] == "word" and final["stopping_word"] == " d"


def test_response_fields_unnest(client):
    body = {
        "prompt": "abc",
        "n_predict": 2,
        "response_fields": ["content", "generation_settings/n_predict", "nope"],
    }
    answer = client.post("/completion", json=body).json()
    assert answer == {"content": "ab", "generation_settings/n_predict": 2}


def test_post_sampling_probs_fields(client):
    body = {"prompt": "ab", "n_probs": 2, "post_sampling_probs": True}
    probs = client.post("/completion", json=body).json()["completion_probabilities"]
    for entry in probs:
        assert set(entry) == {"id", "token", "bytes", "prob", "top_probs"}
        assert 0.0 < entry["prob"] <= 1.0 and len(entry["top_probs"]) == 2
        assert all(set(t) == {"id", "token", "bytes", "prob"} for t in entry["top_probs"])
    plain = client.post("/completion", json={"prompt": "ab", "n_probs": 2}).json()
    entry = plain["completion_probabilities"][0]
    assert set(entry) == {"id", "token", "bytes", "logprob", "top_logprobs"}


def test_n_indent_cuts_the_first_line_indented_less(client):
    body = {"prompt": "def f():\n    x\ny = 1\n", "n_indent": 4}
    answer = client.post("/completion", json=body).json()
    assert answer["content"] == "def f():\n    x\n"
    assert answer["stop_type"] == "limit"
    streamed = events(client.post("/completion", json=body | {"stream": True}).text)
    assert "".join(e["content"] for e in streamed[:-1]) == answer["content"]
    assert streamed[-1]["stop_type"] == "limit"


@pytest.mark.parametrize(
    ("text", "n_indent", "cut"),
    [
        ("a\n  b", 4, 4),
        ("a\n    b", 4, None),
        ("a\n  ", 4, None),
        ("a\n\tb", 2, 3),
        ("no newline", 4, None),
        ("a\n  b", 0, None),
    ],
)
def test_indent_cut(text, n_indent, cut):
    assert indent_cut(text, n_indent) == cut


def test_t_max_predict_ms_stops_at_a_new_line_after_the_limit(make_client):
    slow = ModelSpec(name="echo", backend="echo", options={"delay": 0.02})
    client = make_client(models=[slow])
    body = {"prompt": "ab\ncd\nef", "t_max_predict_ms": 1}
    answer = client.post("/completion", json=body).json()
    assert answer["content"] == "ab\n" and answer["stop_type"] == "limit"
    assert answer["generation_settings"]["stream"] is False


def test_sse_pings_while_the_stream_is_silent():
    gate = asyncio.Event()

    async def source():
        yield b"data: 1\n\n"
        await gate.wait()
        yield b"data: 2\n\n"

    async def run() -> list[bytes]:
        stream = with_pings(source(), 0.01)
        out = [await anext(stream), await anext(stream)]
        gate.set()
        out += [item async for item in stream]
        return out

    first, ping, *rest = asyncio.run(run())
    assert first == b"data: 1\n\n" and ping == PING
    assert rest[-1] == b"data: 2\n\n" and set(rest[:-1]) <= {PING}


def test_no_pings_when_switched_off():
    async def source():
        yield b"x"

    async def run() -> list[bytes]:
        return [item async for item in with_pings(source(), -1)]

    assert asyncio.run(run()) == [b"x"]


def _overflow(self, request):
    raise ContextExceeded(
        "too long",
        prompt_tokens=5000,
        context=4096,
        param="messages" if request.messages else "prompt",
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/completion", {"prompt": "x"}),
        ("/completion", {"prompt": "x", "stream": True}),
        ("/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
        ("/completions", {"prompt": "x"}),
    ],
)
def test_context_overflow_is_exceed_context_size_error(client, monkeypatch, path, body):
    monkeypatch.setattr(EchoBackend, "generate", _overflow)
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 5000,
            "n_ctx": 4096,
        }
    }


def test_context_overflow_on_v1_is_context_length_exceeded(client, monkeypatch):
    monkeypatch.setattr(EchoBackend, "generate", _overflow)
    response = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert "maximum context length is 4096 tokens" in error["message"]
