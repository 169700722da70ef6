"""The backend outside the server (as a distillation worker uses it): built by the plugin's
factory from settings, loaded, asked directly; and the plugin found by its entry point."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from gateway_schemas.canonical import ChatMessage, GenerationChunk, GenerationRequest
from gateway_teacher.backend import TeacherBackend
from gateway_teacher.plugin import teacher_factory
from gateway_teacher.settings import TeacherSettings
from teacher_helpers import Reply, Upstream, upstream

from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.plugins import make_plugin_manager
from gateway.settings import Settings


@pytest.fixture
def up() -> Iterator[Upstream]:
    with upstream() as found:
        yield found


def build(up: Upstream, tmp_path: Path, **teacher: object) -> TeacherBackend:
    settings = msgspec.convert(
        {"providers": {"up": {"base_url": up.url}}, **teacher}, TeacherSettings
    )
    backend = teacher_factory(settings)(ModelSpec(name="up/m-1", backend="teacher"), tmp_path)
    assert isinstance(backend, TeacherBackend)
    return backend


def request(**kwargs: object) -> GenerationRequest:
    messages = [ChatMessage(role="user", content="Hi")]
    return GenerationRequest(id="g-1", model="up/m-1", messages=messages, **kwargs)


async def collect(backend: TeacherBackend, req: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in backend.generate(req)]


async def test_generate_outside_the_server_prices_the_usage(up: Upstream, tmp_path: Path):
    up.default = Reply(chunks=["Par", "is"], usage=(20, 2))
    backend = build(up, tmp_path, prices={"m-1": {"input": 1.0, "output": 4.0}})
    with pytest.raises(RuntimeError, match="load"):
        await collect(backend, request())
    await backend.load()
    try:
        chunks = await collect(backend, request())
    finally:
        await backend.unload()
    assert "".join(c.text for c in chunks) == "Paris"
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.usage is not None
    assert final.usage.cost == pytest.approx((20 * 1.0 + 2 * 4.0) / 1e6)
    assert backend.prices() == (1e-6, 4e-6)
    assert backend.health()["served"] == 1


async def test_a_time_limit_ends_the_stream_as_length(up: Upstream, tmp_path: Path):
    up.default = Reply(chunks=["a", "b", "c", "d"])
    backend = build(up, tmp_path)
    await backend.load()
    try:
        chunks = await collect(backend, request(time_limit=1e-6))
    finally:
        await backend.unload()
    assert [c.text for c in chunks] == ["a", "b", ""]
    assert chunks[-1].finish_reason == "length"


async def test_abort_ends_the_stream(up: Upstream, tmp_path: Path):
    gate = threading.Event()
    up.default = Reply(chunks=["a", "b", "c"], gate=gate)
    backend = build(up, tmp_path)
    await backend.load()
    try:
        stream = backend.generate(request())
        first = await anext(stream)
        await backend.abort("g-1")
        gate.set()
        rest = [chunk async for chunk in stream]
    finally:
        await backend.unload()
    assert first.text == "a"
    assert rest[-1].finish_reason == "abort"


async def test_the_tokenizer_carries_text_as_bytes(up: Upstream, tmp_path: Path):
    backend = build(up, tmp_path)
    ids = await backend.tokenize("naïve")
    assert ids == list("naïve".encode()) and await backend.detokenize(ids) == "naïve"


def test_the_plugin_is_found_by_its_entry_point(tmp_path: Path):
    pm = make_plugin_manager()
    assert "teacher" in {name for name, _ in pm.list_name_plugin()}
    gateway = Gateway(Settings(data_dir=str(tmp_path), models=[]))
    assert "teacher" in gateway.backends


def test_the_plugin_module_imports_no_http_client():
    import subprocess
    import sys

    code = "import sys, gateway_teacher.plugin\nprint('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
