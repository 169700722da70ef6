"""The stories the Kobold routes keep (save slots, the multiplayer story, the preloaded
story), answered as KoboldCpp answers them, which is how KoboldAI Lite reads them.

The route tests run on SQLite in the test's data directory, one of them on PostgreSQL;
the store tests take the `stories` fixture, parametrized over SQLite and PostgreSQL (a
real server started for the session).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.database import open_story_store
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.settings import KoboldSettings, Settings
from gateway.storage import StoryStore

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


def test_two_replicas_share_stories_and_turns_on_postgresql(make_client, postgres, tmp_path):
    url = postgres.database_for(str(tmp_path))
    first, second = make_client(database_url=url), make_client(database_url=url)
    save = {"slot": 2, "title": "Shared", "format": "kcpp_lzma_b64", "data": "QUJD"}
    assert first.post("/api/extra/data/save", json=save).json()["success"] is True
    loaded = second.post("/api/extra/data/load", json={"slot": 2}).json()
    assert loaded["data"] == {"title": "Shared", "format": "kcpp_lzma_b64", "data": "QUJD"}
    assert second.post("/api/extra/data/list").json()[:3] == ["", "", "Shared"]
    second.post("/api/extra/data/save", json={"slot": 2, "data": ""})
    assert first.post("/api/extra/data/load", json={"slot": 2}).json()["success"] is False
    story = {"full_update": True, "sender": "A", "data_format": "kcpp_lzma_b64", "data": "s1"}
    assert first.post("/api/extra/multiplayer/setstory", json=story).json()["turn_major"] == "1"
    minor = second.post("/api/extra/multiplayer/setstory", json={"data": "s2", "sender": "B"})
    assert (minor.json()["turn_major"], minor.json()["turn_minor"]) == ("1", "1")
    assert first.post("/api/extra/multiplayer/getstory").text == "s2"
    status = first.post("/api/extra/multiplayer/status", json={"sender": "C"}).json()
    assert (status["turn_major"], status["turn_minor"]) == ("1", "1")
    assert not (tmp_path / "gateway.db").exists()  # nothing went to SQLite


# The store, on both databases.


@pytest.fixture(params=["sqlite", "postgres"])
def open_stories(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], StoryStore]]:
    """Open the test's story store (again, as another replica would)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        url = request.getfixturevalue("postgres").database_for(str(tmp_path))
    opened: list[StoryStore] = []

    def make() -> StoryStore:
        opened.append(open_story_store(url))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def stories(open_stories: Callable[[], StoryStore]) -> StoryStore:
    return open_stories()


async def test_the_store_saves_loads_lists_and_erases(stories: StoryStore):
    assert await stories.load_story(1) is None
    assert await stories.story_titles(3) == ["", "", ""]
    await stories.save_story(1, "First", "kcpp_lzma_b64", "QUJD")
    await stories.save_story(1, "Second", "plain", "again")  # the slot is overwritten
    await stories.save_story(2, "", "plain", "x")
    await stories.save_story(7, "Beyond", "plain", "y")
    row = await stories.load_story(1)
    assert row is not None
    assert [row[key] for key in ("slot", "title", "format", "data")] == [
        1,
        "Second",
        "plain",
        "again",
    ]
    assert await stories.story_titles(3) == ["", "Second", "Untitled"]
    await stories.erase_story(1)
    await stories.erase_story(5)  # an empty slot: nothing to do
    assert await stories.load_story(1) is None
    assert await stories.story_titles(3) == ["", "", "Untitled"]


async def test_the_store_counts_turns(stories: StoryStore):
    assert await stories.multiplayer() is None

    async def turn(full: bool, data: str = "s", sender: str = "A") -> tuple[int, int]:
        row = await stories.set_multiplayer(data, "kcpp_lzma_b64", sender, full)
        return row["turn_major"], row["turn_minor"]

    assert await turn(False) == (0, 1)  # a first minor update
    assert await turn(False) == (0, 2)
    assert await turn(True) == (1, 0)
    assert await turn(False, data="latest", sender="B") == (1, 1)
    assert await turn(True) == (2, 0)
    assert await turn(False, data="latest", sender="B") == (2, 1)
    row = await stories.multiplayer()
    assert row is not None
    assert (row["data"], row["data_format"], row["sender"]) == ("latest", "kcpp_lzma_b64", "B")
    assert (row["turn_major"], row["turn_minor"]) == (2, 1)


async def test_replicas_advancing_the_turn_at_once_lose_none(
    open_stories: Callable[[], StoryStore],
):
    """Two stores (two replicas) each advance the minor turn 20 times, all at once: every
    update gets a turn of its own, and the story ends 40 turns on."""
    replicas = [open_stories(), open_stories()]
    await replicas[0].set_multiplayer("start", "f", "A", True)
    updates = [replicas[i % 2].set_multiplayer(f"s{i}", "f", "A", False) for i in range(40)]
    rows = await asyncio.gather(*updates)
    assert sorted(row["turn_minor"] for row in rows) == list(range(1, 41))
    assert {row["turn_major"] for row in rows} == {1}
    final = await replicas[1].multiplayer()
    assert final is not None and (final["turn_major"], final["turn_minor"]) == (1, 40)
