"""LoRA adapters on the llama.cpp and Kobold routes, on the wire: `GET/POST /lora-adapters`,
`lora` by id on /completion and the un-prefixed OpenAI routes, Kobold's `adapter` /
`adapters`, and what each answer says served it.

The EchoBackend serves no adapters: against it every adapter request is a clear 400. The
`LoraEcho` backend below does serve them (from its real store, with the host resolving
them) and records the adapters each generation reached it with. The real model's outputs
under adapters are in test_adapters_dialects_live.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from gateway_schemas.canonical import AdapterRef, GenerationChunk, GenerationRequest
from litestar.testing import TestClient

from gateway import hookimpl
from gateway.adapters.store import CONFIG_FILE, WEIGHTS_FILE
from gateway.app import create_app
from gateway.engine import Capability, ModelSpec
from gateway.gateway import Gateway
from gateway.plugins import make_plugin_manager
from gateway.settings import ApiKey, Settings
from gateway.testing.echo import EchoBackend

NAMES = ["beta", "alpha", "gamma"]
"""Stored adapters; their ids are their positions sorted: alpha 0, beta 1, gamma 2."""
CHAT = [{"role": "user", "content": "hi"}]


class LoraEcho(EchoBackend):
    """The echo model, serving LoRA adapters: it keeps the adapters each request came with."""

    capabilities = EchoBackend.capabilities | {Capability.ADAPTERS}

    def __init__(self, spec: Any, data_dir: Any):
        super().__init__(spec, data_dir)
        self.seen: list[list[AdapterRef] | None] = []

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk]:
        self.seen.append(request.adapters)
        async for chunk in super().generate(msgspec.structs.replace(request, adapters=[])):
            yield chunk


class LoraEchoPlugin:
    @hookimpl
    def register_backends(self, register):
        register("lora-echo", LoraEcho)


@pytest.fixture
def lora_gateway(tmp_path: Path) -> Iterator[tuple[TestClient, LoraEcho]]:
    """A server whose only model serves the adapters in NAMES (config and weights files are
    all the store asks of them; this backend never reads them)."""
    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""})
    pm.register(LoraEchoPlugin(), name="lora-echo")
    settings = Settings(models=[ModelSpec(name="m", backend="lora-echo")], data_dir=str(tmp_path))
    gateway = Gateway(settings, pm)
    with TestClient(create_app(gateway=gateway)) as client:
        deadline = time.monotonic() + 30
        while not gateway.models.all_ready:  # the startup load runs in the background
            assert time.monotonic() < deadline
            time.sleep(0.01)
        backend = gateway.models.get("m")
        assert isinstance(backend, LoraEcho)
        for name in NAMES:
            folder = backend.adapters.root / name
            folder.mkdir(parents=True)
            (folder / CONFIG_FILE).write_text("{}")
            (folder / WEIGHTS_FILE).write_bytes(b"")
        yield client, backend


def refs(*pairs: tuple[str, float]) -> list[AdapterRef]:
    return [AdapterRef(name=name, scale=scale) for name, scale in pairs]


def error(response: Any, status: int = 400) -> str:
    """The message of a llama.cpp-shaped error."""
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == status and body["type"] == "invalid_request_error"
    return str(body["message"])


# ---- llama.cpp: /lora-adapters -------------------------------------------------------------


def test_lora_adapters_lists_sorted_ids_and_default_scales(lora_gateway):
    client, backend = lora_gateway
    listed = client.get("/lora-adapters")
    assert listed.status_code == 200
    assert listed.json() == [
        {"id": 0, "path": "alpha", "scale": 0.0},
        {"id": 1, "path": "beta", "scale": 0.0},
        {"id": 2, "path": "gamma", "scale": 0.0},
    ]
    chosen = [{"id": 2, "scale": 0.5}, {"id": 0, "scale": 1.0}, {"id": 1, "scale": 0}]
    assert client.post("/lora-adapters", json=chosen).json() == {"success": True}
    assert [a["scale"] for a in client.get("/lora-adapters").json()] == [1.0, 0.0, 0.5]
    assert backend.adapters.default() == refs(("gamma", 0.5), ("alpha", 1.0))
    props = client.get("/props").json()["default_generation_settings"]["params"]
    assert props["lora"] == [{"id": 2, "scale": 0.5}, {"id": 0, "scale": 1.0}]
    assert client.post("/lora-adapters", json=[]).json() == {"success": True}
    assert backend.adapters.default() == []


def test_posting_unknown_or_repeated_ids_is_400_and_changes_nothing(lora_gateway):
    client, backend = lora_gateway
    client.post("/lora-adapters", json=[{"id": 1, "scale": 1.0}])
    message = error(client.post("/lora-adapters", json=[{"id": 0, "scale": 1}, {"id": 7}]))
    assert "scale" in message  # a missing field, as a 400 in llama.cpp's shape
    message = error(
        client.post("/lora-adapters", json=[{"id": 7, "scale": 1}, {"id": -1, "scale": 1}])
    )
    assert "7, -1" in message and "0 to 2" in message
    message = error(
        client.post("/lora-adapters", json=[{"id": 0, "scale": 1}, {"id": 0, "scale": 2}])
    )
    assert "more than once" in message and "0" in message
    assert error(client.post("/lora-adapters", json={"id": 0, "scale": 1}))
    assert backend.adapters.default() == refs(("beta", 1.0))


def test_setting_the_default_needs_the_adapters_scope(tmp_path):
    keys = [
        ApiKey(key="inference-key-1", scopes=["inference"]),
        ApiKey(key="admin-key-0001", scopes=["admin"]),
    ]
    settings = Settings(
        models=[ModelSpec(name="echo", backend="echo")], data_dir=str(tmp_path), api_keys=keys
    )
    with TestClient(create_app(gateway=Gateway(settings))) as client:
        reader = {"Authorization": "Bearer inference-key-1"}
        admin = {"Authorization": "Bearer admin-key-0001"}
        assert client.get("/lora-adapters", headers=reader).json() == []
        refused = client.post("/lora-adapters", json=[], headers=reader)
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "permission_error"
        assert "`adapters` scope" in refused.json()["error"]["message"]
        assert client.post("/lora-adapters", json=[], headers=admin).json() == {"success": True}


# ---- llama.cpp: `lora` per request -------------------------------------------------------


def test_completion_lora_picks_exactly_the_listed_adapters(lora_gateway):
    client, backend = lora_gateway
    lora = [{"id": 2, "scale": 0.5}, {"id": 1, "scale": 0.0}, {"id": 0, "scale": -1.0}]
    reply = client.post("/completion", json={"prompt": "abc", "n_predict": 2, "lora": lora})
    assert reply.status_code == 200, reply.text
    assert backend.seen[-1] == refs(("gamma", 0.5), ("alpha", -1.0))
    assert reply.json()["generation_settings"]["lora"] == [
        {"id": 2, "scale": 0.5},
        {"id": 0, "scale": -1.0},
    ]
    assert reply.headers["x-gateway-adapters"] == "gamma@0.5,alpha@-1"
    base = client.post("/completion", json={"prompt": "abc", "lora": []})
    assert backend.seen[-1] == [] and base.headers["x-gateway-adapters"] == "none"
    assert base.json()["generation_settings"]["lora"] == []


def test_completion_without_lora_gets_the_server_default(lora_gateway):
    client, backend = lora_gateway
    client.post("/lora-adapters", json=[{"id": 1, "scale": 0.25}])
    for body in ({"prompt": "abc"}, {"prompt": "abc", "lora": None}):
        reply = client.post("/completion", json=body)
        assert backend.seen[-1] == refs(("beta", 0.25))
        assert reply.json()["generation_settings"]["lora"] == [{"id": 1, "scale": 0.25}]
        assert reply.headers["x-gateway-adapters"] == "beta@0.25"
    streamed = client.post("/completion", json={"prompt": "abc", "stream": True})
    assert streamed.headers["x-gateway-adapters"] == "beta@0.25"
    last = streamed.text.strip().split("\n\n")[-1]
    assert msgspec.json.decode(last.removeprefix("data: "))["generation_settings"]["lora"] == [
        {"id": 1, "scale": 0.25}
    ]


def test_every_prompt_of_a_list_carries_lora(lora_gateway):
    client, backend = lora_gateway
    lora = [{"id": 0, "scale": 1.0}]
    answers = client.post("/completion", json={"prompt": ["ab", "cd"], "lora": lora}).json()
    assert [a["generation_settings"]["lora"] for a in answers] == [[{"id": 0, "scale": 1.0}]] * 2
    assert backend.seen[-2:] == [refs(("alpha", 1.0))] * 2


def test_unknown_lora_ids_are_400_naming_them(lora_gateway, client):
    lora_client, backend = lora_gateway
    body = {"prompt": "abc", "lora": [{"id": 3, "scale": 1.0}, {"id": 1, "scale": 1.0}]}
    message = error(lora_client.post("/completion", json=body))
    assert "`lora`: 3 (ids are 0 to 2" in message and backend.seen == []
    # With no adapters at all (the echo model serves none), any id is unknown.
    message = error(
        client.post("/completion", json={"prompt": "x", "lora": [{"id": 0, "scale": 0}]})
    )
    assert "0 (no LoRA adapters are loaded" in message
    assert client.get("/lora-adapters").json() == []
    assert client.post("/completion", json={"prompt": "x", "lora": []}).status_code == 200


@pytest.mark.parametrize("path", ["/completions", "/chat/completions"])
def test_bare_openai_routes_read_lora_by_id(lora_gateway, path):
    client, backend = lora_gateway
    body: dict[str, Any] = {"prompt": "abc"} if path == "/completions" else {"messages": CHAT}
    reply = client.post(path, json=body | {"lora": [{"id": 1, "scale": 2.0}], "verbose": True})
    assert reply.status_code == 200, reply.text
    assert backend.seen[-1] == refs(("beta", 2.0))
    assert reply.json()["adapters"] == [{"name": "beta", "scale": 2.0}]
    assert reply.json()["__verbose"]["generation_settings"]["lora"] == [{"id": 1, "scale": 2.0}]
    assert reply.headers["x-gateway-adapters"] == "beta@2"
    client.post(path, json=body | {"adapter": "gamma"})  # Kiln's fields work here as on /v1
    assert backend.seen[-1] == refs(("gamma", 1.0))
    client.post(path, json=body | {"lora": []})
    assert backend.seen[-1] == []
    unknown = client.post(path, json=body | {"lora": [{"id": 9, "scale": 1.0}]})
    assert "9" in error(unknown)
    both = client.post(path, json=body | {"lora": [], "adapter": "alpha"})
    assert "not both" in error(both)
    streamed = client.post(path, json=body | {"lora": [{"id": 0, "scale": 1}], "stream": True})
    assert streamed.headers["x-gateway-adapters"] == "alpha@1"


# ---- Kobold: `adapter` / `adapters` ------------------------------------------------------


def kobold_error(response: Any, status: int = 400) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    return str(detail["msg"])


def test_kobold_generate_reads_adapter_fields(lora_gateway):
    client, backend = lora_gateway
    cases: list[tuple[dict[str, Any], list[AdapterRef]]] = [
        ({"adapter": "beta"}, refs(("beta", 1.0))),
        ({"adapter": None}, []),
        ({"adapters": [{"name": "gamma", "scale": "0.5"}, {"name": "alpha"}]},
         refs(("gamma", 0.5), ("alpha", 1.0))),
        ({"adapters": []}, []),
    ]  # fmt: skip
    for extra, expected in cases:
        reply = client.post("/api/v1/generate", json={"prompt": "hi", "max_length": 2} | extra)
        assert reply.status_code == 200, reply.text
        assert backend.seen[-1] == expected, extra
        result = reply.json()["results"][0]
        assert result["adapters"] == [{"name": r.name, "scale": r.scale} for r in expected]
    client.post("/lora-adapters", json=[{"id": 2, "scale": 0.75}])
    result = client.post("/api/v1/generate", json={"prompt": "hi", "adapters": None}).json()
    assert result["results"][0]["adapters"] == [{"name": "gamma", "scale": 0.75}]
    streamed = client.post("/api/extra/generate/stream", json={"prompt": "hi", "adapter": "alpha"})
    assert streamed.status_code == 200 and streamed.headers["x-gateway-adapters"] == "alpha@1"
    assert backend.seen[-1] == refs(("alpha", 1.0))


def test_kobold_adapter_errors_in_kobold_shape(lora_gateway, client):
    lora_client, _ = lora_gateway
    both = lora_client.post("/api/v1/generate", json={"adapter": "alpha", "adapters": []})
    assert "not both" in kobold_error(both)
    missing = lora_client.post("/api/v1/generate", json={"adapter": "nope"})
    assert "nope" in kobold_error(missing, 404)
    assert missing.json()["detail"]["type"] == "not_found"
    assert "adapter" in kobold_error(lora_client.post("/api/v1/generate", json={"adapter": 5}))
    for path in ("/api/v1/generate", "/api/extra/generate/stream"):
        refused = client.post(path, json={"prompt": "x", "adapter": "alpha"})
        assert "does not serve LoRA adapters" in kobold_error(refused)
    base = client.post("/api/v1/generate", json={"prompt": "x", "adapter": None})
    assert base.json()["results"][0]["adapters"] == []
    assert base.headers["x-gateway-adapters"] == "none"
