"""The llama.cpp-native routes on the real default models, over HTTP."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

FRANCE_CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def api(live_server):
    with httpx.Client(base_url=live_server.url, timeout=120) as client:
        yield client


def complete(api: httpx.Client, **body: object) -> dict:
    response = api.post("/completion", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    "text", ["Hello world, déjà vu! 你好 🙂", "<|im_start|>user\nhi<|im_end|>", "  spaces\n\ttabs"]
)
def test_tokenize_detokenize_round_trip(api, text):
    tokens = api.post("/tokenize", json={"content": text}).json()["tokens"]
    assert api.post("/detokenize", json={"tokens": tokens}).json()["content"] == text
    pieces = api.post("/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == tokens


def test_parse_special_switch(api):
    special = api.post("/tokenize", json={"content": "<|im_start|>"}).json()["tokens"]
    plain = api.post("/tokenize", json={"content": "<|im_start|>", "parse_special": False}).json()[
        "tokens"
    ]
    assert len(special) == 1 and len(plain) > 1


def test_apply_template_then_complete_answers_paris(api):
    prompt = api.post(
        "/apply-template",
        json={
            "messages": [
                {"role": "user", "content": "What is the capital of France? Answer in one word."}
            ]
        },
    ).json()["prompt"]
    assert prompt == FRANCE_CHAT
    body = complete(api, prompt=prompt, temperature=0, n_predict=16)
    assert "Paris" in body["content"]
    assert body["stop_type"] == "eos" and body["tokens_evaluated"] > 20


def test_token_id_prompt_matches_text_prompt(api):
    ids = api.post("/tokenize", json={"content": FRANCE_CHAT}).json()["tokens"]
    by_text = complete(api, prompt=FRANCE_CHAT, temperature=0, n_predict=8, cache_prompt=False)
    by_ids = complete(api, prompt=ids, temperature=0, n_predict=8, cache_prompt=False)
    assert api.post("/tokenize", json={"content": "system"}).json()["tokens"] == [ids[1]]
    mixed = complete(
        api, prompt=[ids[0], "system", *ids[2:]], temperature=0, n_predict=8, cache_prompt=False
    )
    assert by_text["content"] == by_ids["content"] == mixed["content"]


def test_stop_types_return_tokens_and_probs(api):
    limit = complete(api, prompt=FRANCE_CHAT, temperature=0, n_predict=3, return_tokens=True)
    assert limit["stop_type"] == "limit" and len(limit["tokens"]) == 3
    word = complete(api, prompt=FRANCE_CHAT, temperature=0, n_predict=20, stop=["Paris"])
    assert word["stop_type"] == "word" and word["stopping_word"] == "Paris"
    assert "Paris" not in word["content"]
    probs = complete(api, prompt=FRANCE_CHAT, temperature=0, n_predict=4, n_probs=3)
    entries = probs["completion_probabilities"]
    assert len(entries) == 4
    for entry in entries:
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["id"] == entry["id"]  # greedy takes the best
    post = complete(
        api, prompt=FRANCE_CHAT, temperature=0, n_predict=2, n_probs=2, post_sampling_probs=True
    )
    assert post["completion_probabilities"][0]["prob"] == pytest.approx(1.0)


def test_streaming_and_plain_give_the_same_text_for_a_seed(api):
    body = {"prompt": "Once upon a time", "n_predict": 24, "seed": 42, "temperature": 0.9}
    plain = complete(api, **body)["content"]
    with api.stream("POST", "/completion", json=body | {"stream": True}) as response:
        chunks = [
            json.loads(line.removeprefix("data: "))
            for line in response.iter_lines()
            if line.startswith("data: ")
        ]
    assert "".join(c["content"] for c in chunks) == plain
    assert chunks[-1]["stop"] is True and chunks[-1]["timings"]["predicted_n"] == 24


def test_slot_save_restore_gives_the_same_continuation(api):
    prompt = "The history of the Roman Empire begins with"
    first = complete(api, prompt=prompt, temperature=0, n_predict=12, id_slot=2)
    saved = api.post("/slots/2?action=save", json={"filename": "roman.bin"}).json()
    assert saved["n_saved"] > 5
    api.post("/slots/2?action=erase")
    restored = api.post("/slots/3?action=restore", json={"filename": "roman.bin"}).json()
    assert restored["n_restored"] == saved["n_saved"]
    again = complete(api, prompt=prompt, temperature=0, n_predict=12, id_slot=3)
    assert again["content"] == first["content"]
    assert again["tokens_cached"] == again["tokens_evaluated"] - 1


def test_rerank_puts_the_panda_first(api):
    body = api.post(
        "/v1/rerank",
        json={
            "query": "What is a panda?",
            "documents": ["hi", "it is a bear", "The giant panda is a bear species."],
        },
    ).json()
    order = [r["index"] for r in body["results"]]
    assert order.index(2) < order.index(0)
    assert order[0] == 2


def test_embedding_is_384_dimensions(api):
    body = api.post("/embedding", json={"content": "a cat"}).json()
    assert len(body[0]["embedding"][0]) == 384


def test_json_schema_constrained_completion(api):
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "maxLength": 40},
            "confidence": {"enum": ["low", "high"]},
            "facts": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        },
        "required": ["answer", "confidence", "facts"],
        "additionalProperties": False,
    }
    body = complete(api, prompt=FRANCE_CHAT, json_schema=schema, n_predict=120, temperature=0)
    jsonschema.validate(json.loads(body["content"]), schema)
    grammar = complete(api, prompt=FRANCE_CHAT, grammar='root ::= "Paris" | "Lyon"', n_predict=8)
    assert grammar["content"] in {"Paris", "Lyon"}


def test_invalid_grammar_is_400(api):
    response = api.post("/completion", json={"prompt": "x", "grammar": "root ::= nowhere"})
    assert response.status_code == 400
    assert "Invalid grammar" in response.json()["error"]["message"]


def test_prompt_too_long_is_exceed_context_size_error(api):
    slots = api.get("/slots").json()
    n_ctx = slots[0]["n_ctx"]
    response = api.post("/completion", json={"prompt": [28] * (n_ctx + 5)})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "exceed_context_size_error"
    assert error["n_prompt_tokens"] == n_ctx + 5 and error["n_ctx"] == n_ctx
    assert error["code"] == 400


def test_props_and_slots_describe_the_engine(api):
    props = api.get("/props").json()
    assert "im_start" in props["chat_template"]
    assert props["total_slots"] == len(api.get("/slots").json()) == 8
    assert props["default_generation_settings"]["n_ctx"] == 4096


CHAT = {
    "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
}


def test_readme_completion_example(api):
    """The README's curl request, verbatim."""
    body = {"prompt": "Building a website can be done in 10 simple steps:", "n_predict": 128}
    answer = complete(api, **body)
    assert answer["content"] and answer["tokens_predicted"] <= 128
    assert answer["prompt"] == body["prompt"]
    assert answer["generation_settings"]["n_predict"] == 128


def test_token_counting_is_tokenize_of_the_rendered_template(api):
    counted = api.post("/v1/chat/completions/input_tokens", json=CHAT).json()
    assert counted["object"] == "response.input_tokens"
    prompt = api.post("/apply-template", json=CHAT).json()["prompt"]
    tokens = api.post("/tokenize", json={"content": prompt, "add_special": True}).json()["tokens"]
    assert counted["input_tokens"] == len(tokens) > 10
    chat = api.post("/v1/chat/completions", json=CHAT | {"max_tokens": 1}).json()
    assert chat["usage"]["prompt_tokens"] == counted["input_tokens"]
    responses = api.post(
        "/v1/responses/input_tokens", json={"input": CHAT["messages"][0]["content"]}
    ).json()
    assert responses == counted


def test_post_sampling_probs_are_the_sampled_distribution(api):
    body = {
        "prompt": FRANCE_CHAT,
        "n_predict": 8,
        "seed": 7,
        "temperature": 0.8,
        "ignore_eos": True,
    }
    kept = complete(api, **body, top_k=5, n_probs=10, post_sampling_probs=True)
    entries = kept["completion_probabilities"]
    assert len(entries) == kept["tokens_predicted"] == 8
    for entry in entries:
        probs = [t["prob"] for t in entry["top_probs"]]
        assert 1 <= len(probs) <= 5  # top_k kept at most 5: fewer than the 10 asked for
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)  # every survivor is listed
        chosen = {t["id"]: t["prob"] for t in entry["top_probs"]}
        assert entry["prob"] == pytest.approx(chosen[entry["id"]])
    capped = complete(api, **body, n_probs=2, post_sampling_probs=True)
    for entry in capped["completion_probabilities"]:
        assert len(entry["top_probs"]) <= 2 and sum(t["prob"] for t in entry["top_probs"]) <= 1.0001
    raw = complete(api, **body, n_probs=3)
    for entry in raw["completion_probabilities"]:
        assert len(entry["top_logprobs"]) == 3 and entry["logprob"] <= 0.0


def test_generation_settings_round_trip(api):
    sent = {
        "temperature": 0.7,
        "top_k": 12,
        "top_p": 0.9,
        "min_p": 0.02,
        "repeat_penalty": 1.05,
        "repeat_last_n": 32,
        "dry_multiplier": 0.5,
        "xtc_probability": 0.1,
        "mirostat": 0,
        "seed": 11,
        "stop": ["\n\n"],
        "n_predict": 6,
        "n_probs": 2,
        "samplers": ["top_k", "typ_p", "top_p", "min_p", "temperature"],
        "ignore_eos": True,
        "logit_bias": [["Paris", -2.5]],
    }
    settings = complete(api, prompt=FRANCE_CHAT, **sent)["generation_settings"]
    for key in sent.keys() - {"logit_bias"}:
        assert settings[key] == sent[key], key
    paris = api.post("/tokenize", json={"content": "Paris"}).json()["tokens"]
    bias = settings["logit_bias"]
    assert bias[: len(paris)] == [{"bias": -2.5, "token": t} for t in paris]
    ends = bias[len(paris) :]
    assert ends and all(e["bias"] is None for e in ends)  # ignore_eos bans the end tokens
    assert settings["n_ctx"] == 4096


def test_verbose_chat_completion(api):
    answer = api.post(
        "/chat/completions", json=CHAT | {"verbose": True, "temperature": 0, "max_tokens": 8}
    ).json()
    verbose = answer["__verbose"]
    assert verbose["content"] == answer["choices"][0]["message"]["content"]
    assert verbose["tokens_evaluated"] == answer["usage"]["prompt_tokens"]
    assert verbose["prompt"] == FRANCE_CHAT
    assert verbose["generation_settings"]["temperature"] == 0


def test_multimodal_prompt_is_refused(api):
    body = {"prompt": {"prompt_string": "<__media__> describe", "multimodal_data": ["aGk="]}}
    response = api.post("/completion", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "Multimodal data provided, but model does not support multimodal requests."
    )


def test_infill_without_fim_tokens_is_501(api):
    response = api.post("/infill", json={"input_prefix": "def add(a, b):\n", "input_suffix": ""})
    assert response.status_code == 501
    error = response.json()["error"]
    assert error["type"] == "not_supported_error" and error["code"] == 501
    assert error["message"].startswith("Infill is not supported by this model: ")


def test_chat_too_long_is_exceed_context_size_error_without_v1(api):
    long = {"messages": [{"role": "user", "content": "hello " * 5000}]}
    bare = api.post("/chat/completions", json=long)
    assert bare.status_code == 400
    error = bare.json()["error"]
    assert error["type"] == "exceed_context_size_error" and error["n_ctx"] == 4096
    assert error["n_prompt_tokens"] > 4096
    assert error["message"] == "the request exceeds the available context size, try increasing it"
    v1 = api.post("/v1/chat/completions", json=long)
    assert v1.status_code == 400
    openai = v1.json()["error"]
    assert openai["code"] == "context_length_exceeded"
    assert openai["type"] == "invalid_request_error" and openai["param"] == "messages"
    assert "maximum context length is 4096 tokens" in openai["message"]


def test_native_embeddings_route(api):
    body = api.post("/embeddings", json={"input": ["a cat", "a dog"]}).json()
    assert [b["index"] for b in body] == [0, 1] and len(body[0]["embedding"][0]) == 384
