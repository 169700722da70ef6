"""`[recording]`: served prompts kept for distillation (gateway.recording).

The HTTP tests run the EchoBackend; one runs the real default model. Each gateway gets a
data directory of its own, so `gateway.db` holds only its records; one test records to
PostgreSQL. The recorder and store tests take `database_url`, parametrized over SQLite and
PostgreSQL (a real server started for the session).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_schemas.canonical import ChatMessage, GenerationChunk, GenerationRequest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.database import open_prompt_store
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.plugins import make_plugin_manager
from gateway.recording import PromptRecorder, PromptStore, RecordedPrompt, SqlitePromptStore
from gateway.settings import DEFAULT_CHAT_MODEL, ApiKey, RecordingSettings, Settings

MODELS = [ModelSpec(name="echo", backend="echo"), ModelSpec(name="other", backend="echo")]
KEYS = [
    ApiKey(key="app-key-12345", name="app", scopes=["inference"]),
    ApiKey(key="ops-key-12345", name="ops", scopes=["admin"]),
]
DAY = 86400.0
DIGEST_ORDER = ["w", "z", "y", "x"]
"""Prompts "w" to "z" in the order of their digests (the tie-break of `select`)."""


def serve(data_dir: Path, **settings: Any) -> tuple[Gateway, TestClient]:
    """A gateway over two echo models (no entry-point plugins) and its client."""
    settings.setdefault("models", MODELS)
    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""})
    gateway = Gateway(Settings(data_dir=str(data_dir), **settings), pm)
    return gateway, TestClient(create_app(gateway=gateway))


def on(**options: Any) -> RecordingSettings:
    return RecordingSettings(enabled=True, **options)


def chat(client: TestClient, text: str, model: str = "echo", **extra: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    response = client.post("/v1/chat/completions", json=body)
    return response


def table_exists(path: Path) -> bool:
    if not path.exists():
        return False
    with sqlite3.connect(path) as db:
        found = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recorded_prompts'"
        ).fetchone()
    return found is not None


def prompt(text: str, at: float, model: str = "echo") -> RecordedPrompt:
    return RecordedPrompt(time=at, model=model, prompt=text)


# Through the routes.


def test_off_by_default_nothing_is_recorded(tmp_path: Path):
    gateway, client = serve(tmp_path)
    assert not gateway.recording.enabled
    with client:
        assert chat(client, "hello").status_code == 200
        completion = client.post("/v1/completions", json={"model": "echo", "prompt": "hi"})
        assert completion.status_code == 200
    assert not table_exists(tmp_path / "gateway.db")
    assert gateway.recording.select() == []
    assert gateway.recording.count() == 0
    assert not table_exists(tmp_path / "gateway.db")  # reading creates nothing either


def test_chat_and_completion_prompts_are_recorded_with_model_tenant_and_time(tmp_path: Path):
    gateway, client = serve(tmp_path, recording=on(), api_keys=KEYS)
    app = {"Authorization": "Bearer app-key-12345"}
    ops = {"Authorization": "Bearer ops-key-12345"}
    started = time.time()
    with client:
        conversation = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 6 times 7?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call-1",
                        "type": "function",
                        "function": {"name": "multiply", "arguments": '{"a": 6, "b": 7}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call-1", "content": "42"},
        ]
        answer = client.post(
            "/v1/chat/completions", json={"model": "echo", "messages": conversation}, headers=app
        )
        assert answer.status_code == 200, answer.text
        completion = client.post(
            "/v1/completions", json={"model": "other", "prompt": "Once upon"}, headers=ops
        )
        assert completion.status_code == 200, completion.text
        native = client.post(
            "/completion",
            json={"prompt": "The sky is", "n_predict": 3, "stream": True},
            headers=app,
        )
        assert native.status_code == 200, native.text
        assert native.text.startswith("data: ")  # streamed; recorded when the stream ends
        ids = client.post("/completion", json={"prompt": [72, 105], "n_predict": 2}, headers=app)
        assert ids.status_code == 200, ids.text  # a token-id prompt: served, not recorded
        gateway.recording.flush()
        finished = time.time()
        records = gateway.recording.select()

    assert [(r.model, r.tenant, r.prompt) for r in records] == [
        ("echo", "app", "The sky is"),
        ("other", "ops", "Once upon"),
        ("echo", "app", None),
    ]
    assert records[2].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 6 times 7?"},
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": "42"},
    ]
    assert records[0].messages is None and records[1].messages is None
    assert all(started <= r.time <= finished for r in records)
    assert records[0].time >= records[1].time >= records[2].time
    assert gateway.recording.count() == 3


def test_anonymous_traffic_has_no_tenant_and_failures_are_not_recorded(tmp_path: Path):
    gateway, client = serve(tmp_path, recording=on())
    with client:
        assert chat(client, "fine").status_code == 200
        refused = chat(client, "refused", logit_bias={"999": 1})  # the backend refuses it
        assert refused.status_code == 400
    assert [(r.messages, r.tenant) for r in gateway.recording.select()] == [
        ([{"role": "user", "content": "fine"}], None)
    ]


def test_only_the_chosen_models_are_recorded(tmp_path: Path):
    gateway, client = serve(tmp_path, recording=on(models=["other"]))
    with client:
        assert chat(client, "to echo").status_code == 200
        assert chat(client, "to other", model="other").status_code == 200
        assert client.post("/completion", json={"prompt": "x", "n_predict": 1}).status_code == 200
    records = gateway.recording.select()
    assert [(r.model, r.messages) for r in records] == [
        ("other", [{"role": "user", "content": "to other"}])
    ]


def test_a_repeated_prompt_is_kept_once(tmp_path: Path):
    gateway, client = serve(tmp_path, recording=on())
    with client:
        for _ in range(3):
            assert chat(client, "again").status_code == 200
        assert chat(client, "again", n=2).status_code == 200  # two choices, one prompt
        gateway.recording.flush()
        first = gateway.recording.select()[0].time
        assert chat(client, "again", model="other").status_code == 200
        assert chat(client, "once").status_code == 200
    assert gateway.recording.count() == 2
    assert gateway.recording.count(model="echo") == 2
    assert gateway.recording.count(model="other") == 1
    again = [
        r
        for r in gateway.recording.select()
        if r.messages == [{"role": "user", "content": "again"}]
    ]
    assert len(again) == 1
    assert again[0].model == "other"  # the model that served it last
    assert again[0].time >= first


def test_a_failing_write_is_logged_and_the_response_unharmed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    gateway, client = serve(tmp_path, recording=on())

    def broken(records: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    gateway.recording.store.add = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="gateway.recording"), client:
        answer = chat(client, "still answered")
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "still answered"
        gateway.recording.flush()
    assert "recording 1 prompt(s) failed" in caplog.text


def test_old_records_go_on_the_first_write(tmp_path: Path):
    """Records left by an earlier run beyond `max_age_days` are pruned by the first write."""
    now = time.time()
    earlier = SqlitePromptStore.in_data_dir(tmp_path, max_age_days=365)
    earlier.add([prompt("ancient", now - 40 * DAY), prompt("recent", now - 1 * DAY)])
    assert earlier.count() == 2
    gateway, client = serve(tmp_path, recording=on(max_age_days=30))
    with client:
        assert (
            client.post("/v1/completions", json={"model": "echo", "prompt": "new"}).status_code
            == 200
        )
    assert [r.prompt for r in gateway.recording.select()] == ["new", "recent"]


def test_prompts_are_recorded_to_postgresql_when_database_url_names_it(postgres, tmp_path: Path):
    url = postgres.database_for(str(tmp_path))
    gateway, client = serve(tmp_path, recording=on(), database_url=url)
    with client:
        assert chat(client, "shared").status_code == 200
        gateway.recording.flush()
    other = open_prompt_store(url)  # another replica reads what this one recorded
    assert [r.messages for r in other.select()] == [[{"role": "user", "content": "shared"}]]
    other.close()
    assert not table_exists(tmp_path / "gateway.db")


@pytest.fixture
def real_model_dir(data_dir: Path, tmp_path: Path) -> Path:
    """A data directory of its own that shares the session's converted default model."""
    (tmp_path / "models").symlink_to((data_dir / "models").resolve(), target_is_directory=True)
    return tmp_path


def test_a_live_chat_with_the_default_model_is_recorded(real_model_dir: Path):
    settings = Settings(data_dir=str(real_model_dir), models=[DEFAULT_CHAT_MODEL], recording=on())
    gateway = Gateway(settings)
    question = [{"role": "user", "content": "Name a fruit."}]
    with TestClient(create_app(gateway=gateway), timeout=300) as client:
        deadline = time.monotonic() + 300
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health").text
            time.sleep(0.2)
        answer = client.post(
            "/v1/chat/completions",
            json={"messages": question, "max_tokens": 4, "temperature": 0},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]
    (record,) = gateway.recording.select()
    assert record.model == DEFAULT_CHAT_MODEL.name
    assert record.messages == question
    assert record.prompt is None and record.tenant is None


# The recorder and the store.


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's database: `gateway.db` in its folder, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    return str(request.getfixturevalue("postgres").database_for(str(tmp_path)))


@pytest.fixture
def open_store(database_url: str) -> Iterator[Callable[..., PromptStore]]:
    """Open the test's prompt store with the given options (closed after the test)."""
    opened: list[PromptStore] = []

    def make(**options: Any) -> PromptStore:
        opened.append(open_prompt_store(database_url, **options))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def finished(reason: str = "stop") -> GenerationChunk:
    return GenerationChunk(finish_reason=reason)  # type: ignore[arg-type]


def test_the_recorder_decides_what_is_recorded(database_url: str):
    now = [100.0]
    recorder = PromptRecorder(on(models=["echo"]), database_url, clock=lambda: now[0])
    hi = [ChatMessage(role="user", content="hi")]
    chat_request = GenerationRequest(id="1", model="echo", messages=hi, tenant="t")
    assert recorder.record(chat_request, finished())
    now[0] = 101.0
    text = GenerationRequest(id="2", model="echo", prompt="text")
    assert recorder.record(text, finished("length"))
    assert not recorder.record(chat_request, finished("error"))
    assert not recorder.record(chat_request, finished("abort"))
    assert not recorder.record(GenerationRequest(id="3", model="other", prompt="x"), finished())
    assert not recorder.record(GenerationRequest(id="4", model="echo", prompt=[1, 2]), finished())
    assert not recorder.record(GenerationRequest(id="5", model="echo", prompt=""), finished())
    now[0] = 102.0
    tokenized = GenerationRequest(id="6", model="echo", prompt=[104, 105])
    recorder.note_text(tokenized, "hi there")  # what the client wrote, before tokenizing
    assert recorder.record(tokenized, finished())
    recorder.close()  # writes what is queued
    assert recorder.select() == [
        RecordedPrompt(time=102.0, model="echo", prompt="hi there"),
        RecordedPrompt(time=101.0, model="echo", prompt="text"),
        RecordedPrompt(
            time=100.0, model="echo", tenant="t", messages=[{"role": "user", "content": "hi"}]
        ),
    ]
    recorder.store.close()


def test_a_disabled_recorder_writes_nothing(tmp_path: Path):
    recorder = PromptRecorder(RecordingSettings(), f"sqlite:///{tmp_path / 'gateway.db'}")
    request = GenerationRequest(id="1", model="echo", prompt="hello")
    assert not recorder.record(request, finished())
    recorder.close()
    assert recorder.select() == [] and recorder.count() == 0
    assert not (tmp_path / "gateway.db").exists()


def test_retention_keeps_the_newest_max_records(open_store: Callable[..., PromptStore]):
    store = open_store(max_records=3, prune_every=1, clock=lambda: 10.0)
    for at in range(1, 6):
        store.add([prompt(f"p{at}", float(at))])
    assert [r.prompt for r in store.select()] == ["p5", "p4", "p3"]
    assert store.count() == 3


def test_retention_between_prunes_is_bounded_by_prune_every(
    open_store: Callable[..., PromptStore],
):
    store = open_store(max_records=2, prune_every=3, clock=lambda: 10.0)
    store.add([prompt("p1", 1.0)])  # the first write prunes
    store.add([prompt("p2", 2.0)])
    store.add([prompt("p3", 3.0)])
    assert store.count() == 3  # one over, until the third write since the prune
    store.add([prompt("p4", 4.0)])
    assert [r.prompt for r in store.select()] == ["p4", "p3"]
    store.add([prompt("p5", 5.0), prompt("p6", 6.0)])
    assert store.prune() == 2  # both deletions count


def test_retention_drops_what_is_older_than_max_age(open_store: Callable[..., PromptStore]):
    now = [1000 * DAY]
    store = open_store(max_age_days=30, prune_every=1, clock=lambda: now[0])
    store.add([prompt("old", now[0] - 29 * DAY), prompt("older", now[0] - 31 * DAY)])
    assert [r.prompt for r in store.select()] == ["old"]
    now[0] += 2 * DAY
    store.add([prompt("new", now[0])])
    assert [r.prompt for r in store.select()] == ["new"]
    assert store.prune() == 0


def test_a_prompt_served_again_is_refreshed_not_duplicated(
    open_store: Callable[..., PromptStore],
):
    store = open_store()
    store.add([RecordedPrompt(time=5.0, model="a", tenant="x", prompt="same")])
    store.add([RecordedPrompt(time=9.0, model="a", tenant="y", prompt="same")])
    store.add([RecordedPrompt(time=7.0, model="a", tenant="z", prompt="same")])  # late writer
    assert store.select() == [RecordedPrompt(time=9.0, model="a", tenant="y", prompt="same")]
    # A text prompt and a chat with the same words are different prompts.
    store.add(
        [RecordedPrompt(time=10.0, model="a", messages=[{"role": "user", "content": "same"}])]
    )
    assert store.count() == 2


def test_a_prompt_served_by_several_models_is_selected_once_as_last_served(
    open_store: Callable[..., PromptStore],
):
    store = open_store(clock=lambda: 10.0)
    store.add([prompt("same", 1.0, "a"), prompt("same", 3.0, "b"), prompt("other", 2.0, "a")])
    store.add([RecordedPrompt(time=4.0, model="a", tenant="t", prompt="same")])
    assert store.select() == [
        RecordedPrompt(time=4.0, model="a", tenant="t", prompt="same"),
        prompt("other", 2.0, "a"),
    ]
    assert store.select(model="b") == [prompt("same", 3.0, "b")]
    assert store.select(until=4.0) == [prompt("same", 3.0, "b"), prompt("other", 2.0, "a")]
    assert store.count() == 2 and store.count(until=4.0) == 2 and store.count(model="b") == 1


def test_prompts_served_at_the_same_time_come_in_digest_order(
    open_store: Callable[..., PromptStore],
):
    store = open_store(clock=lambda: 10.0)
    store.add([prompt(text, 5.0) for text in ("w", "x", "y", "z")])
    assert [r.prompt for r in store.select()] == DIGEST_ORDER
    assert [r.prompt for r in store.select(limit=2)] == DIGEST_ORDER[:2]


@pytest.fixture
def window(open_store: Callable[..., PromptStore]) -> Iterator[PromptStore]:
    store = open_store(clock=lambda: 100.0)
    store.add(
        [
            prompt("a10", 10.0, "a"),
            prompt("b20", 20.0, "b"),
            prompt("a30", 30.0, "a"),
            prompt("b40", 40.0, "b"),
        ]
    )
    yield store


def test_selection_by_model_and_time_window(window: PromptStore):
    def texts(**filters: Any) -> list[str | None]:
        return [r.prompt for r in window.select(**filters)]

    assert texts() == ["b40", "a30", "b20", "a10"]  # newest first
    assert texts(model="a") == ["a30", "a10"]
    assert texts(since=20.0) == ["b40", "a30", "b20"]  # since: inclusive
    assert texts(until=30.0) == ["b20", "a10"]  # until: exclusive
    assert texts(model="b", since=15.0, until=40.0) == ["b20"]
    assert texts(limit=2) == ["b40", "a30"]
    assert texts(model="nobody") == []
    assert window.count() == 4
    assert window.count(model="a", since=20.0) == 1
    assert window.count(since=10.0, until=40.0) == 3
    with pytest.raises(ValueError, match="limit"):
        window.select(limit=-1)
