"""The KoboldCpp routes on the real SmolLM2, over HTTP: every sampler end to end."""

from __future__ import annotations

import json

import httpx
import pytest

QUESTION = "{{[INPUT]}}What is the capital of France?{{[OUTPUT]}}"


@pytest.fixture(scope="module")
def api(live_server):
    with httpx.Client(base_url=live_server.url, timeout=120) as client:
        yield client


def generate(api: httpx.Client, **body: object) -> dict:
    body.setdefault("replace_instruct_placeholders", True)
    response = api.post("/api/v1/generate", json={"prompt": QUESTION, **body})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_instruct_placeholders_and_greedy_answer(api):
    result = generate(api, temperature=0, max_length=16)
    assert "Paris" in result["text"]
    assert result["finish_reason"] == "stop"


SAMPLERS = {
    "temperature": {"temperature": 0.7},
    "top_k": {"top_k": 5},
    "top_p": {"top_p": 0.5},
    "min_p": {"min_p": 0.1},
    "typical": {"typical": 0.5},
    "tfs": {"tfs": 0.9},
    "top_a": {"top_a": 0.2},
    "rep_pen": {"rep_pen": 1.3, "rep_pen_range": 64},
    "rep_pen_slope": {"rep_pen": 1.3, "rep_pen_range": 64, "rep_pen_slope": 0.7},
    "dynatemp": {"temperature": 1.0, "dynatemp_range": 0.5, "dynatemp_exponent": 1.5},
    "smoothing_factor": {"smoothing_factor": 0.3},
    "mirostat_v1": {"mirostat": 1, "mirostat_tau": 4.0, "mirostat_eta": 0.2},
    "mirostat_v2": {"mirostat": 2, "mirostat_tau": 4.0, "mirostat_eta": 0.2},
    "dry": {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2},
    "xtc": {"xtc_threshold": 0.1, "xtc_probability": 0.5},
    "nsigma": {"nsigma": 1.0},
    "sampler_order": {"sampler_order": [5, 6, 0, 1, 3, 4, 2]},
    "banned_tokens": {"banned_tokens": ["Paris"]},
    "logit_bias": {"logit_bias": {"28": -2.0}},
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_end_to_end(api, name):
    body = {"max_length": 12, "sampler_seed": 11, "use_default_badwordsids": True}
    first = generate(api, **body, **SAMPLERS[name])
    again = generate(api, **body, **SAMPLERS[name])
    assert first["completion_tokens"] == 12  # EOS banned: the whole pipeline ran each step
    assert first["text"] and first["text"] == again["text"]  # the same seed, the same text


def test_samplers_change_the_output(api):
    greedy = generate(api, temperature=0, max_length=16)["text"]
    assert generate(api, top_k=1, temperature=1.5, max_length=16)["text"] == greedy
    banned = generate(api, temperature=0, max_length=16, banned_tokens=["Paris"])["text"]
    assert "Paris" not in banned and banned != greedy


def test_dry_breaks_a_repetition(api):
    loop = "red green blue red green blue red green blue red green blue red green"
    body = {"prompt": loop, "temperature": 0, "max_length": 4, "rep_pen": 1.0}
    plain = api.post("/api/v1/generate", json=body).json()["results"][0]["text"]
    dry = api.post(
        "/api/v1/generate", json=body | {"dry_multiplier": 3.0, "dry_allowed_length": 2}
    ).json()["results"][0]["text"]
    assert plain.startswith(" blue")  # greedy continues the loop
    assert not dry.startswith(" blue")  # DRY penalises the repeat's next token


def test_grammar_and_json_to_grammar(api):
    yes_no = generate(api, grammar='root ::= "Yes" | "No"', max_length=8)
    assert yes_no["text"] in {"Yes", "No"}
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    grammar = api.post("/api/extra/json_to_grammar", json={"schema": schema}).json()["result"]
    constrained = generate(api, grammar=grammar, max_length=40, temperature=0)
    assert set(json.loads(constrained["text"])) == {"city"}
    bad = api.post("/api/v1/generate", json={"prompt": "x", "grammar": "root ::= nowhere"})
    assert bad.status_code == 400 and "Invalid grammar" in bad.json()["detail"]["msg"]


def test_stream_matches_the_plain_text(api):
    body = {"prompt": QUESTION, "replace_instruct_placeholders": True, "temperature": 0}
    plain = api.post("/api/v1/generate", json=body | {"max_length": 12}).json()["results"][0]
    with api.stream("POST", "/api/extra/generate/stream", json=body | {"max_length": 12}) as r:
        tokens = [
            json.loads(line.removeprefix("data: "))["token"]
            for line in r.iter_lines()
            if line.startswith("data: ")
        ]
    assert "".join(tokens) == plain["text"]


def test_logprobs_and_token_counts(api):
    result = generate(api, temperature=0, max_length=4, logprobs=True, genkey="KLP")
    content = result["logprobs"]["content"]
    assert len(content) == 4 and all(len(c["top_logprobs"]) == 5 for c in content)
    last = api.post("/api/extra/last_logprobs", json={"genkey": "KLP"}).json()
    assert last["logprobs"]["content"] == content
    count = api.post("/api/extra/tokencount", json={"prompt": "Hello world"}).json()
    assert count["value"] == len(count["ids"]) > 0
    back = api.post("/api/extra/detokenize", json={"ids": count["ids"]}).json()
    assert back["result"] == "Hello world"


def test_kv_state_save_and_load_continues_the_same(api):
    prompt = "The old lighthouse keeper looked at the sea and said"
    body = {"prompt": prompt, "temperature": 0, "max_length": 12}
    first = api.post("/api/v1/generate", json=body).json()["results"][0]["text"]
    saved = api.post("/api/admin/save_state", json={"slot": 1}).json()
    assert saved["success"] is True and saved["new_tokens"] > 10
    state = api.post("/api/admin/check_state").json()
    assert state["old_states"][1]["tokens"] == saved["new_tokens"]
    slots = api.get("/slots").json()
    for slot in slots:  # forget every cached prompt
        api.post(f"/slots/{slot['id']}?action=erase")
    assert all(s["cached_tokens"] == 0 for s in api.get("/slots").json())
    loaded = api.post("/api/admin/load_state", json={"slot": 1}).json()
    assert loaded == {"success": True, "new_tokens": saved["new_tokens"]}
    assert max(s["cached_tokens"] for s in api.get("/slots").json()) == saved["new_tokens"]
    again = api.post("/api/v1/generate", json=body).json()["results"][0]["text"]
    assert again == first
    assert api.post("/api/admin/clear_state").json() == {"success": True}


def test_a_lenient_body_on_the_real_model(api):
    """What frontends send and KoboldCpp accepts: numbers as floats and text, nulls, a
    model name, SillyTavern's JSON-encoded breakers; the greedy answer is unchanged."""
    body = {
        "prompt": QUESTION,
        "replace_instruct_placeholders": True,
        "max_length": 12.0,
        "temperature": "0",
        "top_k": 40.0,
        "mirostat": 0.0,
        "dry_allowed_length": 2.0,
        "rep_pen_range": "64",
        "sampler_seed": "7",
        "stop_sequence": None,
        "model": "kcpp",
        "dry_multiplier": 0.5,
        "dry_sequence_breakers": '["\\n", ":"]',
        "banned_strings": [],
        "n": 1,
        "gui_settings": False,
    }
    lenient = generate(api, **body)
    strict = generate(api, temperature=0, max_length=12)
    assert "Paris" in lenient["text"] and lenient["completion_tokens"] <= 12
    assert strict["text"].startswith(lenient["text"][:5])


def test_missing_fields_take_koboldcpp_defaults_on_the_real_model(api):
    response = api.post("/api/v1/generate", json={"prompt": QUESTION, "max_length": 4})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["completion_tokens"] <= 4
    blank = api.post("/api/v1/generate", json={"max_length": 3})  # no prompt at all
    assert blank.status_code == 200, blank.text


def test_extreme_values_are_clamped_not_refused_on_the_real_model(api):
    """Values KoboldCpp clamps or lets a sampler ignore, all at once, on every sampler."""
    body = {
        "prompt": "The sea",
        "max_context_length": 1,
        "max_length": 10**9,
        "temperature": 1e-300,
        "top_k": 10**12,
        "top_p": 7,
        "min_p": -1,
        "typical": 3,
        "tfs": -2,
        "top_a": 1e300,
        "rep_pen": 1e308,
        "rep_pen_range": -5,
        "rep_pen_slope": 40,
        "mirostat": 1.5,
        "dry_multiplier": 2e16,
        "dry_base": 0.3,
        "dry_allowed_length": -4,
        "dry_penalty_last_n": 10**15,
        "xtc_threshold": -1,
        "xtc_probability": 9,
        "nsigma": 1e30,
        "dynatemp_range": 5,
        "dynatemp_exponent": -3,
        "smoothing_factor": 1e200,
        "sampler_order": [2924, -1949, 5, 5, 6, 0],
        "sampler_seed": 10**15,
        "logit_bias": {"abc": 1, "99999999": 5, "28": -1e9},
    }
    response = api.post("/api/v1/generate", json=body)
    assert response.status_code == 200, response.text
    # KoboldCpp: a context of 1 leaves room for one generated token.
    assert response.json()["results"][0]["completion_tokens"] <= 1
    for mirostat in (1, 2):
        wild = body | {"max_context_length": 64, "max_length": 4, "mirostat": mirostat}
        response = api.post("/api/v1/generate", json=wild | {"mirostat_tau": 4e33})
        assert response.status_code == 200, response.text


def test_a_json_grammar_is_a_schema_and_embeddings_ignore_the_model(api):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    result = generate(api, grammar=json.dumps(schema), max_length=30, temperature=0)
    assert set(json.loads(result["text"])) == {"ok"}
    reply = api.post("/api/extra/embeddings", json={"model": "kcpp", "input": "Niko"})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["data"][0]["embedding"]) > 100
