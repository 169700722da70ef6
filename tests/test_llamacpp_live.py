"""The llama.cpp-native routes on the real default models, over HTTP."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

FRANCE_CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
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
        json={"messages": [{"role": "user", "content": "What is the capital of France?"}]},
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


def test_props_and_slots_describe_the_engine(api):
    props = api.get("/props").json()
    assert "im_start" in props["chat_template"]
    assert props["total_slots"] == len(api.get("/slots").json()) == 8
    assert props["default_generation_settings"]["n_ctx"] == 4096
