"""Wire format of the KoboldCpp family, against the EchoBackend, validated against the
schemas of koboldcpp-openapi.json where it defines them: the generation and tokenizer
routes, the bodies KoboldCpp accepts (what its frontends send) and how they are read and
clamped, and the routes of capabilities this server lacks. Stories are in
test_kobold_stories.py, the queue, polling and admin routes in test_kobold_serving.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from gateway_schemas.canonical import GenerationRequest, JsonSchemaConstraint
from litestar.testing import TestClient

from gateway import hookimpl
from gateway.app import create_app
from gateway.engine import Capability, ModelSpec
from gateway.gateway import Gateway
from gateway.plugins import make_plugin_manager
from gateway.settings import Settings
from gateway.testing.echo import EchoBackend

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


def generate(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


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
    trimmed = generate(client, **body)
    assert trimmed["text"] == "Hi there" and trimmed["finish_reason"] == "stop"
    assert generate(client, **body, trim_stop=False)["text"] == "Hi there fr"


def test_prompt_and_memory_are_cut_from_the_start_to_fit_the_context(client):
    body = {"prompt": "abcdefghij", "memory": "M", "max_context_length": 8, "max_length": 3}
    # 8 tokens of context - 3 to generate - 1 of memory: the last 4 prompt tokens stay.
    # The echo model repeats its prompt, 3 tokens of it.
    assert generate(client, **body)["text"] == "Mgh"
    # 4 of context: 3 to generate leave 1, too little for memory plus KoboldCpp's slack of 4:
    # the memory goes, the prompt keeps its last token.
    assert generate(client, **body | {"max_context_length": 4})["text"] == "j"


def test_max_length_leaves_a_fifth_of_the_context_to_the_prompt(client):
    prompt = "".join(chr(ord("a") + i % 26) for i in range(200))
    result = generate(client, prompt=prompt, max_context_length=100, max_length=1000)
    # KoboldCpp: max_length >= 100 - 20 is cut to 80, leaving 20 tokens of prompt; the echo
    # model repeats those 20 (it cannot say more than its prompt).
    assert result["text"] == prompt[-20:]
    assert result["completion_tokens"] == 20 and result["finish_reason"] == "stop"
    huge = generate(client, prompt="abc", max_context_length=10**12, max_length=10**12)
    assert huge["text"] == "abc"  # clamped to the model's context, not refused


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
    assert {version[k] for k in ("txt2img", "vision", "transcribe", "tts", "websearch")} == {False}


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
    assert client.post("/api/extra/generate/check").json() == {"results": [{"text": "abc"}]}
    for unknown in ({"genkey": "nope"}, {"genkey": 5}):
        reply = client.post("/api/extra/generate/check", json=unknown).json()
        assert reply == {"results": [{"text": ""}]}
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
    assert client.post("/api/extra/tokencount", json={}).json() == {"value": 0, "ids": []}
    text = client.post("/api/extra/detokenize", json={"ids": [104, 105]}).json()
    validate(spec, "post", "/api/extra/detokenize", text)
    assert text == {"result": "hi", "success": True}
    assert client.post("/api/extra/detokenize", json={}).json() == {"result": "", "success": True}
    grammar = client.post("/api/extra/json_to_grammar", json={"schema": {"type": "object"}}).json()
    assert grammar == {"result": 'start: %json {"type": "object"}\n', "success": True}
    # KoboldCpp: a body without `schema` is the schema.
    bare = client.post("/api/extra/json_to_grammar", json={"type": "string"}).json()
    assert bare["result"] == 'start: %json {"type": "string"}\n'


def test_embeddings_ignore_the_model_name(client):
    for name in ("kcpp", "echo", None):
        body = client.post("/api/extra/embeddings", json={"model": name, "input": "x"})
        assert body.status_code == 200, body.text
        assert body.json()["model"] == "echo" and len(body.json()["data"][0]["embedding"]) == 8
    empty = client.post("/api/extra/embeddings", json={}).json()
    assert empty["data"] == [] and empty["usage"]["prompt_tokens"] == 0


class TextOnly(EchoBackend):
    capabilities = EchoBackend.capabilities - {Capability.EMBED}


class TextOnlyPlugin:
    @hookimpl
    def register_backends(self, register):
        register("text-only", TextOnly)


def test_embeddings_without_an_embedding_model_are_empty_vectors(tmp_path):
    """KoboldCpp without an embedding model answers an empty vector per input."""
    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""})
    pm.register(TextOnlyPlugin(), name="text-only")
    settings = Settings(models=[ModelSpec(name="t", backend="text-only")], data_dir=str(tmp_path))
    with TestClient(create_app(gateway=Gateway(settings, pm))) as client:
        reply = client.post("/api/extra/embeddings", json={"input": ["a", "b"]}).json()
        assert client.get("/api/extra/version").json()["embeddings"] is False
    assert reply["model"] == "inactive"
    assert [d["embedding"] for d in reply["data"]] == [[], []]


# ---- bodies as KoboldCpp reads them ------------------------------------------------------


class Recorder:
    """Keeps the canonical request of every generation (a `prepare_generation` plugin)."""

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    @hookimpl
    def prepare_generation(self, gateway, request):
        self.requests.append(request)


@pytest.fixture
def recorded(tmp_path):
    recorder = Recorder()
    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""})
    pm.register(recorder, name="recorder")
    settings = Settings(models=[ModelSpec(name="echo", backend="echo")], data_dir=str(tmp_path))
    with TestClient(create_app(gateway=Gateway(settings, pm))) as client:

        def send(**body: Any) -> GenerationRequest:
            response = client.post("/api/v1/generate", json={"prompt": "abcdef", **body})
            assert response.status_code == 200, response.text
            return recorder.requests[-1]

        yield send


LENIENT = {
    # KoboldCpp's int(): integers given as floats or text, fractions cut.
    "mirostat as a float": ({"mirostat": 2.0}, "sampling.mirostat", 2),
    "dry_allowed_length as a float": (
        {"dry_allowed_length": 3.0},
        "sampling.dry_allowed_length",
        3,
    ),
    "top_k with a fraction": ({"top_k": 40.7}, "sampling.top_k", 40),
    "rep_pen_range as text": ({"rep_pen_range": "64"}, "sampling.penalty_last_n", 64),
    "max_length with a fraction": ({"max_length": 2.9}, "max_tokens", 2),
    "max_length as text": ({"max_length": "3"}, "max_tokens", 3),
    "sampler_seed as text (KoboldAI Lite)": ({"sampler_seed": "7"}, "sampling.seed", 7),
    "use_default_badwordsids as 1": ({"use_default_badwordsids": 1}, "ignore_eos", True),
    # float(): integers and text where floats are expected.
    "temperature as an integer": ({"temperature": 1}, "sampling.temperature", 1.0),
    "temperature as text": ({"temperature": "0.5"}, "sampling.temperature", 0.5),
    # text that does not parse, and null: the default.
    "temperature as words": ({"temperature": "warm"}, "sampling.temperature", 0.75),
    "top_k as words": ({"top_k": "many"}, "sampling.top_k", 100),
    "max_length as words": ({"max_length": "lots"}, "max_tokens", 100),
    "temperature null": ({"temperature": None}, "sampling.temperature", 0.75),
    "stop_sequence null": ({"stop_sequence": None}, "stop", []),
    "missing everything": ({}, "sampling.top_p", 0.92),
    "the model is ignored": ({"model": "kcpp"}, "model", "echo"),
    # KoboldCpp's aliases.
    "ban_eos_token": ({"ban_eos_token": True}, "ignore_eos", True),
    "ban_eos_token wins": (
        {"ban_eos_token": False, "use_default_badwordsids": True},
        "ignore_eos",
        False,
    ),
    "repetition_penalty": ({"repetition_penalty": 1.3}, "sampling.repeat_penalty", 1.3),
    "the largest penalty": (
        {"rep_pen": 1.1, "repeat_penalty": 1.2},
        "sampling.repeat_penalty",
        1.2,
    ),
    "presence_penalty": ({"presence_penalty": 0.4}, "sampling.presence_penalty", 0.4),
    "banned_strings (SillyTavern)": (
        {"banned_strings": ["bc"]},
        "sampling.banned_sequences",
        [[98, 99], [32, 98, 99]],
    ),
    "custom_token_bans": (
        {"custom_token_bans": "5, 7,x"},
        "sampling.logit_bias",
        {5: -100.0, 7: -100.0},
    ),
    "dry_sequence_breakers as JSON text (SillyTavern)": (
        {"dry_multiplier": 0.8, "dry_sequence_breakers": '["\\n", ":"]'},
        "sampling.dry_sequence_breakers",
        ["\n", ":"],
    ),
    "dry_sequence_breakers as other text": (
        {"dry_sequence_breakers": "not json"},
        "sampling.dry_sequence_breakers",
        [],
    ),
    # KoboldCpp's clamps.
    "negative temperature is greedy": ({"temperature": -1}, "sampling.temperature", 0.0),
    "top_p above 1 is off": ({"top_p": 5}, "sampling.top_p", 1.0),
    "negative min_p is off": ({"min_p": -0.2}, "sampling.min_p", 0.0),
    "negative top_k keeps all": ({"top_k": -5}, "sampling.top_k", 0),
    "mirostat 3 is off": ({"mirostat": 3}, "sampling.mirostat", 0),
    "rep_pen_range 0 is 1": ({"rep_pen_range": 0}, "sampling.penalty_last_n", 1),
    "rep_pen_slope 1 is flat": ({"rep_pen_slope": 1}, "sampling.repeat_penalty_slope", 0.0),
    "rep_pen_slope inside (0, 1)": (
        {"rep_pen_slope": 0.5},
        "sampling.repeat_penalty_slope",
        0.5,
    ),
    "xtc off above a threshold of 0.5": (
        {"xtc_threshold": 0.7, "xtc_probability": 0.5},
        "sampling.xtc_probability",
        0.0,
    ),
    "xtc_probability above 1": ({"xtc_probability": 3}, "sampling.xtc_probability", 1.0),
    "dry_base 0 switches DRY off": (
        {"dry_base": 0, "dry_multiplier": 1},
        "sampling.dry_multiplier",
        0.0,
    ),
    "dry_base below 1": ({"dry_base": 0.5, "dry_multiplier": 1}, "sampling.dry_base", 1.0),
    "dry_penalty_last_n 0 is the whole context": (
        {"dry_penalty_last_n": 0},
        "sampling.dry_penalty_last_n",
        -1,
    ),
    "sampler_seed 0 is random": ({"sampler_seed": 0}, "sampling.seed", None),
    "a huge seed saturates": ({"sampler_seed": 10**12}, "sampling.seed", 2**31 - 1),
    "negative dynatemp_exponent": ({"dynatemp_exponent": -1}, "sampling.dynatemp_exponent", 0.0),
    "logit_bias: what KoboldCpp skips": (
        {"logit_bias": {"abc": 1, "5": "x", "-3": 2, "999999": 5, "104": -200, "7": 0, "9": "1.5"}},
        "sampling.logit_bias",
        {104: -100.0, 9: 1.5},
    ),
    "images without vision are ignored": ({"images": ["aGk="]}, "prompt", list(b"abcdef")),
    "a JSON grammar is a JSON schema": (
        {"grammar": '{"type": "object"}'},
        "constraint",
        JsonSchemaConstraint(schema={"type": "object"}),
    ),
    "a blank grammar is none": ({"grammar": "  "}, "constraint", None),
}


@pytest.mark.parametrize("case", sorted(LENIENT))
def test_bodies_are_read_and_clamped_as_koboldcpp_does(recorded, case):
    body, path, expected = LENIENT[case]
    value: Any = recorded(**body)
    for name in path.split("."):
        value = getattr(value, name)
    assert value == expected


def test_sampler_order_as_koboldcpp_reads_it(recorded):
    default = recorded().sampling.order
    assert recorded(sampler_order=[]).sampling.order == default
    assert recorded(sampler_order=[0] * 8).sampling.order == default  # longer than 7
    odd = recorded(sampler_order=[0, 0, 9, -1, 5, 6]).sampling.order
    assert odd == ["top_n_sigma", "top_k", "min_p", "xtc", "temperature", "penalties", "dry"]
    assert recorded(sampler_order=["5", 6.0]).sampling.order[-3:] == [
        "temperature",
        "penalties",
        "dry",
    ]


def test_lenient_bodies_generate_and_stream(client):
    assert generate(client, prompt="abcdef", max_length="2", mirostat=0.0)["text"] == "ab"
    assert generate(client, prompt="abcdef", max_length=3.9, top_k="40")["text"] == "abc"
    assert generate(client, prompt="a.b", stop_sequence=["."], trim_stop="false")["text"] == "a."
    blank = generate(client)  # no prompt: KoboldCpp's blank prompt (here a newline)
    assert blank["finish_reason"] == "stop"
    stream = client.post("/api/extra/generate/stream", json={"prompt": "abc", "max_length": "2"})
    events = [json.loads(b.split("data: ", 1)[1]) for b in stream.text.strip().split("\n\n")]
    assert "".join(e["token"] for e in events) == "ab"


def test_a_koboldai_lite_body(client):
    """What KoboldAI Lite sends (its `finalize_submit_payload`, flattened for KoboldCpp)."""
    body = {
        "n": 1,
        "max_context_length": 8192,
        "max_length": 4,
        "rep_pen": 1.07,
        "temperature": 0.75,
        "top_p": 0.92,
        "top_k": 100,
        "top_a": 0,
        "typical": 1,
        "tfs": 1,
        "rep_pen_range": 360,
        "rep_pen_slope": 0.7,
        "sampler_order": [6, 0, 1, 3, 4, 2, 5],
        "sampler_seed": "42",
        "min_p": 0,
        "dynatemp_range": 0,
        "dynatemp_exponent": 1,
        "smoothing_factor": 0,
        "smoothing_curve": 1,
        "nsigma": 0,
        "banned_tokens": [],
        "render_special": False,
        "logprobs": False,
        "presence_penalty": 0,
        "logit_bias": {},
        "stop_sequence": ["{{[INPUT]}}", "{{[OUTPUT]}}"],
        "use_default_badwordsids": False,
        "bypass_eos": False,
        "replace_instruct_placeholders": True,
        "genkey": "KCPP1234",
        "prompt": "{{[INPUT]}}Hello{{[OUTPUT]}}",
    }
    result = generate(client, **body)
    assert result["finish_reason"] == "length" and len(result["text"]) == 4


def test_a_sillytavern_body(client):
    """What SillyTavern's KoboldCpp text-completion source sends: floats for integers,
    JSON-encoded sequence breakers, `banned_strings`, and fields KoboldCpp ignores."""
    body = {
        "prompt": "abcdef",
        "max_new_tokens": 4,
        "max_length": 4.0,
        "max_context_length": 4096.0,
        "temperature": 1,
        "top_k": 0.0,
        "top_p": "1",
        "typical_p": 1,
        "typical": 1,
        "min_p": 0.05,
        "rep_pen": 1.0,
        "rep_pen_range": 0.0,
        "repetition_penalty_range": 0,
        "mirostat": 0.0,
        "mirostat_mode": 0,
        "mirostat_tau": 5,
        "mirostat_eta": 0.1,
        "dry_multiplier": 0,
        "dry_base": 1.75,
        "dry_allowed_length": 2.0,
        "dry_penalty_last_n": 0.0,
        "dry_sequence_breakers": '["\\n", ":", "\\"", "*"]',
        "banned_strings": [],
        "sampler_seed": -1,
        "sampler_order": [6, 0, 1, 3, 4, 2, 5],
        "grammar": "",
        "trim_stop": True,
        "stop_sequence": [],
        "stopping_strings": [],
        "stream": False,
        "n": 1,
        "api_server": "http://127.0.0.1:5001/api",
        "can_abort": True,
        "gui_settings": False,
        "use_world_info": False,
        "singleline": False,
    }
    assert generate(client, **body)["text"] == "abcd"


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "prompt",
        {"prompt": 3},
        {"prompt": ["x"]},
        {"prompt": "x", "temperature": [1]},
        {"prompt": "x", "max_length": {"n": 1}},
        {"prompt": "x", "sampler_order": "6,0,1"},
        {"prompt": "x", "sampler_order": [1.5]},
        {"prompt": "x", "stop_sequence": [1]},
        {"prompt": "x", "banned_tokens": "abc"},
        {"prompt": "x", "logit_bias": []},
        {"prompt": "x", "images": "aGk="},
        {"prompt": "x", "trim_stop": "maybe"},
    ],
)
def test_bodies_koboldcpp_cannot_read_are_400_in_kobold_shape(client, body):
    """What KoboldCpp's own reading fails on (it drops the connection or answers 500)."""
    response = client.post("/api/v1/generate", json=body)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail["type"] == "bad_input" and detail["msg"]


def test_a_body_that_is_not_json_is_400(client):
    response = client.post(
        "/api/v1/generate", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["detail"]["type"] == "bad_input"


# ---- the capabilities this server lacks --------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/sdapi/v1/sd-models", []),
        ("GET", "/sdapi/v1/samplers", []),
        ("GET", "/sdapi/v1/upscalers", []),
        ("GET", "/sdapi/v1/latent-upscale-modes", []),
        ("GET", "/sdapi/v1/options", {"samples_format": "png", "sd_model_checkpoint": "inactive"}),
        ("POST", "/sdapi/v1/txt2img", {"images": [""], "parameters": {}, "info": ""}),
        ("POST", "/sdapi/v1/img2img", {"images": [""], "parameters": {}, "info": ""}),
        ("POST", "/api/extra/transcribe", {"text": ""}),
        ("POST", "/api/extra/websearch", []),
        ("GET", "/api/admin/list_options", []),
    ],
)
def test_absent_capabilities_answer_as_koboldcpp_with_them_off(client, method, path, expected):
    body = {"prompt": "a kobold", "q": "kobold", "audio_data": ""} if method == "POST" else None
    response = client.request(method, path, json=body)
    assert response.status_code == 200, response.text
    assert response.json() == expected


def test_tts_off_is_an_empty_wav(client):
    response = client.post("/api/extra/tts", json={"input": "hello", "voice": "kobo"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav" and response.content == b""


def test_interrogate_without_vision_is_refused_with_a_4xx(client):
    response = client.post("/sdapi/v1/interrogate", json={"image": "aGk=", "model": "clip"})
    assert response.status_code == 400
    assert "No Vision model loaded" in response.json()["detail"]["msg"]


def test_serviceinfo_and_props(make_client):
    client = make_client(routes={"llamacpp": False})
    info = client.get("/.well-known/serviceinfo").json()
    assert info["api"]["koboldai"]["rel_url"] == "/api"
    props = client.get("/props").json()
    assert props["default_generation_settings"]["n_ctx"] == 4096 and props["total_slots"] >= 1


class BosEcho(EchoBackend):
    """The echo tokenizer with a BOS token (id 1) in front, as llama tokenizers add it."""

    async def tokenize(self, text, *, add_special=True, parse_special=True):
        return ([1] if add_special else []) + list(text.encode())


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": "abc"}, [1, *b"abc"]),
        # 8 of context - 3 to generate - BOS: 4 tokens, cut from the start, BOS in front
        ({"prompt": "abcdefghij"}, [1, *b"ghij"]),
        # memory needs 4 tokens of slack beyond itself, or it is cut from its start
        ({"prompt": "abcdefghij", "memory": "MNO", "max_length": 1}, [1, *b"NOghij"]),
        ({"prompt": "abcdefghij", "memory": "MNO", "max_length": 6}, [1, *b"j"]),
        # KoboldCpp's blank prompt: BOS alone
        ({}, [1]),
    ],
)
def test_prompt_ids_keep_bos_in_front_of_a_cut_prompt(tmp_path, body, expected):
    import asyncio

    from gateway_schemas.kobold import GenerationInput

    from gateway.routes.kobold.translate import prompt_ids

    backend = BosEcho(ModelSpec(name="bos", backend="echo"), tmp_path)
    request = GenerationInput(**{"max_length": 3, **body})
    assert asyncio.run(prompt_ids(backend, request, 8, request.max_length or 3)) == expected
