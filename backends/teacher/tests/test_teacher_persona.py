"""A teacher model's `system_prompt` option: instructions sent before every chat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from gateway_schemas.canonical import ChatMessage, GenerationRequest
from gateway_teacher.backend import with_system
from gateway_teacher.plugin import teacher_factory
from gateway_teacher.settings import TeacherSettings
from teacher_helpers import Upstream, upstream

from gateway.engine import ModelSpec
from gateway.errors import ConfigError


@pytest.fixture
def up() -> Iterator[Upstream]:
    with upstream() as found:
        yield found


def test_with_system_puts_the_instructions_first():
    user = ChatMessage(role="user", content="Hi")
    assert with_system([user], "Be a pirate.") == [
        ChatMessage(role="system", content="Be a pirate."),
        user,
    ]
    system = ChatMessage(role="system", content="Answer briefly.")
    joined = with_system([system, user], "Be a pirate.")
    assert joined == [ChatMessage(role="system", content="Be a pirate.\n\nAnswer briefly."), user]


async def test_the_upstream_gets_the_system_prompt_for_chats_only(up: Upstream, tmp_path: Path):
    settings = msgspec.convert({"providers": {"up": {"base_url": up.url}}}, TeacherSettings)
    spec = ModelSpec(name="up/m-1", backend="teacher", options={"system_prompt": "Always say arr."})
    backend = teacher_factory(settings)(spec, tmp_path)
    await backend.load()
    try:
        chat = GenerationRequest(
            id="a", model="up/m-1", messages=[ChatMessage(role="user", content="Hi")]
        )
        text = GenerationRequest(id="b", model="up/m-1", prompt="Once upon")
        for request in (chat, text):
            async for _ in backend.generate(request):
                pass
    finally:
        await backend.unload()
    assert up.requests[0]["messages"] == [
        {"role": "system", "content": "Always say arr."},
        {"role": "user", "content": "Hi"},
    ]
    assert up.requests[1]["prompt"] == "Once upon"


def test_a_wrong_system_prompt_type_is_refused(tmp_path: Path):
    settings = msgspec.convert({"providers": {"up": {"base_url": "http://x/v1"}}}, TeacherSettings)
    spec = ModelSpec(name="up/m-1", backend="teacher", options={"system_prompt": 3})
    with pytest.raises(ConfigError, match="system_prompt"):
        teacher_factory(settings)(spec, tmp_path)
