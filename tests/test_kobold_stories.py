"""The stories the Kobold routes keep (save slots, the multiplayer story, the preloaded
story), answered as KoboldCpp answers them, which is how KoboldAI Lite reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.settings import KoboldSettings, Settings

SPEC = Path(__file__).with_name("data") / "koboldcpp-openapi.json"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return json.loads(SPEC.read_text())


def validate(spec: dict[str, Any], path: str, body: Any) -> None:
    schema = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]
    jsonschema.validate(body, {**schema["schema"], "components": spec["components"]})


def test_save_load_list_erase(client, spec):
    save = {"slot": "1", "title": "My story", "format": "kcpp_lzma_b64", "data": "QUJD"}
    saved = client.post("/api/extra/data/save", json=save).json()
    validate(spec, "/api/extra/data/save", saved)
    assert saved == {"success": True, "error": ""}
    loaded = client.post("/api/extra/data/load", json={"slot": "1"}).json()
    # As KoboldCpp answers (Lite reads `data.data`), not the document's string `data`.
    assert loaded == {
        "success": True,
        "data": {"title": "My story", "format": "kcpp_lzma_b64", "data": "QUJD"},
    }
    client.post("/api/extra/data/save", json={"slot": 2.0, "data": "X"})
    titles = client.post("/api/extra/data/list").json()
    validate(spec, "/api/extra/data/list", titles)
    assert titles[:3] == ["", "My story", "Untitled Save"] and len(titles) == 8
    assert client.post("/api/extra/data/load", json={"slot": 5}).json() == {
        "success": False,
        "data": None,
    }
    assert client.post("/api/extra/data/load").json()["success"] is False  # slot 0, empty
    erased = client.post("/api/extra/data/save", json={"slot": 1, "data": ""}).json()
    assert erased["success"] is True
    assert client.post("/api/extra/data/load", json={"slot": 1}).json()["success"] is False


@pytest.mark.parametrize(
    "body", [{"slot": 99, "data": "x"}, {"slot": "abc", "data": "x"}, {"slot": -1}, {}]
)
def test_a_refused_save_says_why_as_koboldcpp_and_kobold_do(client, body):
    refused = client.post("/api/extra/data/save", json=body)
    assert refused.status_code == 400
    reply = refused.json()
    assert reply["success"] is False and "invalid slot" in reply["error"]
    assert reply["detail"] == {"msg": reply["error"], "type": "bad_input"}


def test_multiplayer_turns(client, spec):
    status = client.post("/api/extra/multiplayer/status", json={"sender": "A"}).json()
    validate(spec, "/api/extra/multiplayer/status", status)
    assert status["turn_major"] == "0"
    assert client.post("/api/extra/multiplayer/status").status_code == 200
    first = client.post(
        "/api/extra/multiplayer/setstory",
        json={"full_update": True, "sender": "A", "data_format": "kcpp_lzma_b64", "data": "s1"},
    ).json()
    validate(spec, "/api/extra/multiplayer/setstory", first)
    minor = client.post("/api/extra/multiplayer/setstory", json={"data": "s2"}).json()
    # `full_update` defaults to false, as in KoboldCpp: a minor turn.
    assert (first["turn_major"], minor["turn_major"], minor["turn_minor"]) == ("1", "1", "1")
    story = client.post("/api/extra/multiplayer/getstory")
    assert story.headers["content-type"].startswith("text/plain") and story.text == "s2"
    refused = client.post("/api/extra/multiplayer/setstory", json={"sender": "A"})
    assert refused.status_code == 400 and refused.json()["error"] == "No story submitted!"


def test_getstory_before_any_story_is_empty_text(client):
    story = client.post("/api/extra/multiplayer/getstory")
    assert story.status_code == 200 and story.text == ""


def test_story_data_survives_a_restart(tmp_path):
    settings = Settings(models=[ModelSpec(name="echo", backend="echo")], data_dir=str(tmp_path))
    with TestClient(create_app(gateway=Gateway(settings))) as first:
        first.post("/api/extra/data/save", json={"slot": 3, "title": "Kept", "data": "DATA"})
        first.post("/api/extra/multiplayer/setstory", json={"data": "shared", "sender": "A"})
    assert (tmp_path / "gateway.db").is_file()
    with TestClient(create_app(gateway=Gateway(settings))) as second:
        loaded = second.post("/api/extra/data/load", json={"slot": 3}).json()
        assert loaded["data"]["data"] == "DATA" and loaded["data"]["title"] == "Kept"
        assert second.post("/api/extra/multiplayer/getstory").text == "shared"


def test_preloadstory(make_client, tmp_path):
    assert make_client().get("/api/extra/preloadstory").json() == {}
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"prompt": "Once", "memory": "", "authorsnote": "", "actions": []}))
    client = make_client(kobold=KoboldSettings(preload_story=str(story)))
    assert client.get("/api/extra/preloadstory").json()["prompt"] == "Once"


def test_multiplayer_idle_is_whether_someone_else_is_busy(client):
    def status(**body: object) -> int:
        return client.post("/api/extra/multiplayer/status", json=body).json()["idle"]

    assert status(sender="A") == 1
    assert status(sender="A", senderbusy=True) == 1  # one's own typing does not count
    assert status(sender="B") == 0  # A is busy
    client.post("/api/extra/multiplayer/setstory", json={"data": "s", "sender": "B"})
    assert status(sender="C") == 0
