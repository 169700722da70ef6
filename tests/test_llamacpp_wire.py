"""Wire format of the llama.cpp-native family, against the deterministic EchoBackend."""

from __future__ import annotations

import json

import pytest

from gateway.settings import ApiKey, LlamaCppSettings


def events(body: str) -> list[dict[str, object]]:
    out = []
    for block in body.strip().split("\n\n"):
        assert block.startswith("data: "), block
        out.append(json.loads(block.removeprefix("data: ")))
    return out


def test_completion_fields(client):
    body = client.post("/completion", json={"prompt": "Hello", "n_predict": 3}).json()
    assert body["content"] == "Hel"
    assert body["stop"] is True and body["stop_type"] == "limit"
    assert body["stopping_word"] == "" and body["truncated"] is False
    assert body["model"] == "echo"
    assert body["tokens_evaluated"] == 5 and body["tokens_predicted"] == 3
    assert body["tokens_cached"] == 0 and body["tokens"] == []
    assert body["timings"]["predicted_n"] == 3
    assert body["generation_settings"]["n_predict"] == 3
    assert body["generation_settings"]["temperature"] == 0.8  # llama.cpp's default


def test_completion_stop_types(client):
    assert client.post("/completion", json={"prompt": "abc"}).json()["stop_type"] == "eos"
    worded = client.post("/completion", json={"prompt": "abc def", "stop": [" d"]}).json()
    assert worded["stop_type"] == "word" and worded["stopping_word"] == " d"
    assert worded["content"] == "abc"


def test_mixed_prompt_return_tokens_and_probs(client):
    body = client.post(
        "/completion", json={"prompt": [72, "i!"], "return_tokens": True, "n_probs": 2}
    ).json()
    assert body["content"] == "Hi!" and body["tokens"] == [72, 105, 33]
    probs = body["completion_probabilities"]
    assert [p["id"] for p in probs] == [72, 105, 33]
    assert probs[0]["token"] == "H" and probs[0]["bytes"] == [72]
    assert probs[0]["logprob"] <= 0 and len(probs[0]["top_logprobs"]) == 2
    post = client.post(
        "/completion", json={"prompt": "H", "n_probs": 1, "post_sampling_probs": True}
    ).json()
    entry = post["completion_probabilities"][0]
    assert 0 < entry["prob"] <= 1 and "logprob" not in entry and len(entry["top_probs"]) == 1


def test_response_fields(client):
    body = client.post(
        "/completion",
        json={"prompt": "abc", "response_fields": ["content", "timings/predicted_n"]},
    ).json()
    assert body == {"content": "abc", "timings/predicted_n": 3}


def test_streaming_matches_non_streaming(client):
    plain = client.post("/completion", json={"prompt": "stream me", "seed": 4}).json()
    response = client.post("/completion", json={"prompt": "stream me", "seed": 4, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = events(response.text)
    assert all(c["stop"] is False for c in chunks[:-1])
    assert chunks[-1]["stop"] is True and chunks[-1]["stop_type"] == "eos"
    assert "".join(str(c["content"]) for c in chunks) == plain["content"]
    timed = events(
        client.post(
            "/completion", json={"prompt": "ab", "stream": True, "timings_per_token": True}
        ).text
    )
    assert timed[0]["timings"]["predicted_n"] == 1


def test_tokenize_detokenize_and_pieces(client):
    tokens = client.post("/tokenize", json={"content": "hi"}).json()["tokens"]
    assert tokens == [104, 105]
    pieces = client.post("/tokenize", json={"content": "hi", "with_pieces": True}).json()
    assert pieces["tokens"] == [{"id": 104, "piece": "h"}, {"id": 105, "piece": "i"}]
    assert client.post("/detokenize", json={"tokens": tokens}).json() == {"content": "hi"}


def test_apply_template(client):
    body = {"messages": [{"role": "user", "content": "x"}]}
    assert client.post("/apply-template", json=body).json() == {"prompt": "user: x\nassistant:"}


def test_infill_without_fim_tokens_is_501_not_supported(client):
    response = client.post("/infill", json={"input_prefix": "def f(", "input_suffix": ")"})
    assert response.status_code == 501
    assert response.json() == {
        "error": {
            "code": 501,
            "message": "Infill is not supported by this model: prefix token is missing. "
            "suffix token is missing. middle token is missing. ",
            "type": "not_supported_error",
        }
    }


def test_embedding_and_normalisation(client):
    body = client.post("/embedding", json={"content": ["a", "b"]}).json()
    assert [item["index"] for item in body] == [0, 1]
    vector = body[0]["embedding"][0]
    assert sum(x * x for x in vector) == pytest.approx(1.0)
    taxicab = client.post("/embedding", json={"content": "a", "embd_normalize": 1}).json()
    assert sum(abs(x) for x in taxicab[0]["embedding"][0]) == pytest.approx(1.0)
    native = client.post("/embeddings", json={"input": ["a", "b"]}).json()
    assert [item["index"] for item in native] == [0, 1]
    assert native[0]["embedding"] == body[0]["embedding"]
    oai = client.post("/v1/embeddings", json={"model": "echo", "input": "a"}).json()
    assert oai["object"] == "list" and oai["data"][0]["object"] == "embedding"


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank"])
def test_rerank_sorted_with_top_n(client, path):
    body = client.post(
        path, json={"query": "same", "documents": ["other", "same", "x"], "top_n": 2}
    ).json()
    results = body["results"]
    assert len(results) == 2 and results[0]["index"] == 1
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_props(client):
    props = client.get("/props").json()
    assert props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == 4096
    assert props["modalities"] == {"vision": False, "audio": False}
    assert set(props) >= {
        "model_path",
        "chat_template",
        "chat_template_caps",
        "model_alias",
        "media_marker",
        "build_info",
        "is_sleeping",
    }
    default = props["default_generation_settings"]
    assert set(default) >= {
        "id",
        "id_task",
        "n_ctx",
        "speculative",
        "is_processing",
        "params",
        "prompt",
        "next_token",
    }
    assert default["params"]["temperature"] == 0.8 and default["params"]["top_k"] == 40
    assert default["params"]["seed"] == 4294967295 and default["params"]["n_predict"] == -1
    assert set(default["next_token"]) >= {"has_next_token", "has_new_line", "n_remain", "n_decoded"}


def test_post_props_is_off_unless_enabled(make_client):
    off = make_client()
    response = off.post("/props", json={"temperature": 0.1})
    assert response.status_code == 501
    assert response.json()["error"]["type"] == "not_supported_error"
    on = make_client(llamacpp=LlamaCppSettings(props=True, n_predict=5))
    assert on.post("/completion", json={"prompt": "abcdefgh"}).json()["content"] == "abcde"
    assert on.post("/props", json={"n_predict": 2}).json() == {"success": True}
    assert on.post("/completion", json={"prompt": "abcdefgh"}).json()["content"] == "ab"
    assert on.post("/props", json={"bogus": 1}).status_code == 400


def test_slots_list_save_restore_erase(client, tmp_path):
    client.post("/completion", json={"prompt": "cache me", "id_slot": 1})
    slots = client.get("/slots").json()
    assert [s["id"] for s in slots] == [0, 1]
    assert slots[0]["params"]["samplers"][0] == "penalties"
    assert {"speculative", "is_processing", "next_token", "n_ctx", "id_task"} <= set(slots[0])
    assert slots[1]["cached_tokens"] == len("cache me")
    saved = client.post("/slots/1?action=save", json={"filename": "one.bin"}).json()
    assert saved["id_slot"] == 1 and saved["n_saved"] == 8 and saved["filename"] == "one.bin"
    assert (tmp_path / "slots" / "one.bin").is_file()
    assert client.post("/slots/1?action=erase").json() == {"id_slot": 1, "n_erased": 8}
    assert client.get("/slots").json()[1]["cached_tokens"] == 0
    restored = client.post("/slots/0?action=restore", json={"filename": "one.bin"}).json()
    assert restored["n_restored"] == 8
    assert client.get("/slots").json()[0]["cached_tokens"] == 8


@pytest.mark.parametrize("name", ["../escape.bin", "/etc/passwd", "a/b", "", ".hidden", "x" * 200])
def test_slot_file_names_are_validated(client, name):
    response = client.post("/slots/0?action=save", json={"filename": name})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_slot_errors(client):
    assert client.post("/slots/0?action=explode", json={"filename": "a"}).status_code == 400
    missing = client.post("/slots/0?action=restore", json={"filename": "never-saved.bin"})
    assert missing.status_code == 400 and "never-saved.bin" in missing.json()["error"]["message"]
    assert client.post("/slots/9?action=erase").status_code == 400


def test_slots_can_be_switched_off(make_client):
    client = make_client(llamacpp=LlamaCppSettings(slots=False, metrics=False))
    for response in (client.get("/slots"), client.post("/slots/0?action=erase")):
        assert response.status_code == 501
        assert response.json()["error"]["type"] == "not_supported_error"
    metrics = client.get("/metrics")
    assert metrics.status_code == 501
    assert metrics.json()["error"]["type"] == "not_supported_error"


def test_openai_routes_without_v1_prefix(client):
    chat = {"model": "echo", "messages": [{"role": "user", "content": "yo"}]}
    assert (
        client.post("/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
        == "yo"
    )
    assert (
        client.post("/completions", json={"model": "echo", "prompt": "ab"}).json()["choices"][0][
            "text"
        ]
        == "ab"
    )
    assert client.get("/models").json()["data"][0]["id"] == "echo"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/completion", {"prompt": 5}),
        ("/completion", {}),
        ("/completion", {"prompt": "x", "temperature": "hot"}),
        ("/completion", {"prompt": "x", "dry_sequence_breakers": []}),
        ("/completion", {"prompt": "x", "lora": [{"id": 0, "scale": 1.0}]}),
        ("/completion", {"prompt": "x", "n_cmpl": 0}),
        ("/completion", {"prompt": "x", "n_cmpl": 3}),
        ("/completion", {"prompt": "x", "mirostat": 3}),
        ("/completion", {"prompt": [[1, 2], 3]}),
        ("/completion", {"prompt": []}),
        ("/completion", {"prompt": ""}),
        ("/infill", {"input_prefix": "x"}),
        ("/embedding", {"content": ""}),
        ("/embedding", {}),
        ("/v1/chat/completions/input_tokens", {"messages": []}),
        ("/v1/responses/input_tokens", {"input": []}),
        ("/v1/responses/input_tokens", {"input": [{"type": "web_search_call"}]}),
        ("/rerank", {"query": "q"}),
        ("/completion", {"prompt": "x", "top_p": 1.5}),
        ("/completion", {"prompt": "x", "n_predict": -7}),
        ("/completion", {"prompt": "x", "logit_bias": [[1]]}),
        ("/completion", {"prompt": "x", "logit_bias": [[1, "big"]]}),
        ("/completion", {"prompt": "x", "samplers": ["top_k", "warp_drive"]}),
        ("/completion", {"prompt": "x", "grammar": "a", "json_schema": {}}),
        ("/tokenize", {"content": 3}),
        ("/detokenize", {"tokens": ["a"]}),
        ("/apply-template", {"messages": []}),
        ("/rerank", {"query": "q", "documents": []}),
        ("/chat/completions", {"model": "echo", "messages": []}),
    ],
)
def test_bad_bodies_are_400_in_llama_cpp_shape(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and error["type"] == "invalid_request_error"
    assert error["message"]


def test_malformed_json_and_unknown_model(client):
    response = client.post(
        "/completion", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == 400
    missing = client.post("/completion", json={"prompt": "x", "model": "nope"})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


def test_logit_bias_text_and_false(client):
    banned = client.post(
        "/completion", json={"prompt": "ab", "logit_bias": [["b", False]], "n_probs": 0}
    )
    assert banned.status_code == 200
    as_dict = client.post("/completion", json={"prompt": "ab", "logit_bias": {"98": -5}})
    assert as_dict.status_code == 200


def test_wrong_key_is_authentication_error(make_client):
    client = make_client(api_keys=[ApiKey(key="sekrit-key-1", scopes=["inference"])])
    response = client.post("/completion", json={"prompt": "x"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    wrong = client.post(
        "/completion", json={"prompt": "x"}, headers={"Authorization": "Bearer nope-nope-nope"}
    )
    assert wrong.status_code == 401
    ok = client.post(
        "/completion", json={"prompt": "x"}, headers={"Authorization": "Bearer sekrit-key-1"}
    )
    assert ok.status_code == 200


def test_family_can_be_switched_off(make_client):
    client = make_client(routes={"llamacpp": False})
    assert client.post("/completion", json={"prompt": "x"}).status_code == 404
    assert client.get("/slots").status_code == 404
    # /props stays, served by the Kobold family (KoboldCpp has it too), with the template.
    props = client.get("/props").json()
    assert "chat_template" in props and "media_marker" not in props
    assert client.post("/v1/completions", json={"model": "echo", "prompt": "x"}).status_code == 200


@pytest.mark.parametrize("samplers", [["top_k", "typ_p", "temperature"], "kypmt", ["dry", "xtc"]])
def test_sampler_orders_are_accepted(client, samplers):
    response = client.post("/completion", json={"prompt": "ab", "samplers": samplers})
    assert response.status_code == 200, response.text


def test_unknown_sampler_letter_is_400(client):
    response = client.post("/completion", json={"prompt": "ab", "samplers": "kq"})
    assert response.status_code == 400 and "q" in response.json()["error"]["message"]


def test_chat_stream_usage_and_timings_per_token(client):
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": "abc"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "timings_per_token": True,
    }
    blocks = client.post("/chat/completions", json=body).text.strip().split("\n\n")
    assert blocks[-1] == "data: [DONE]"
    chunks = [json.loads(b.removeprefix("data: ")) for b in blocks[:-1]]
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert [c["timings"]["predicted_n"] for c in content] == [1, 2, 3]
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3
    assert last["timings"]["predicted_n"] == 3


def test_fail_on_no_slot_answers_503_while_every_slot_is_busy(tmp_path):
    import threading

    import httpx
    from live import start_server, stop_server

    config = tmp_path / "echo.toml"
    config.write_text(
        '[[models]]\nname = "echo"\nbackend = "echo"\noptions = { slots = 1, delay = 0.05 }\n'
    )
    server = start_server(["--config", str(config)], {}, tmp_path / "server.log", timeout=60)
    try:
        slots = f"{server.url}/slots?fail_on_no_slot=1"
        assert httpx.get(slots).status_code == 200
        body = {"prompt": "x" * 40, "id_slot": 0}
        busy = threading.Thread(
            target=httpx.post,
            args=(f"{server.url}/completion",),
            kwargs={"json": body, "timeout": 30},
        )
        busy.start()
        refused = []
        while busy.is_alive():
            response = httpx.get(slots)
            if response.status_code == 503:
                refused.append(response.json()["error"]["type"])
        busy.join()
        assert refused and set(refused) == {"unavailable_error"}
        assert httpx.get(slots).status_code == 200
    finally:
        stop_server(server)
