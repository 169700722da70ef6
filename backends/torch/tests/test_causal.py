"""TorchBackend on the real SmolLM2-135M-Instruct GGUF (CPU). Short generations only."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from gateway_schemas.canonical import (
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
)
from gateway_torch import gguf_cache
from gateway_torch.causal import TorchBackend
from gateway_torch.options import parse_options

from gateway.engine import ModelSpec
from gateway.errors import BackendFailure, InvalidRequest

FRANCE = "What is the capital of France?"
STORY = "Write a long story about a dragon."


def chat(content: str = FRANCE, *, request_id: str = "req", **kwargs: object) -> GenerationRequest:
    """A one-message chat request; greedy unless `sampling` is given."""
    kwargs.setdefault("sampling", SamplingParams(temperature=0.0))
    return GenerationRequest(
        id=request_id,
        model="smol",
        messages=[ChatMessage(role="user", content=content)],
        **kwargs,  # type: ignore[arg-type]
    )


async def collect(
    backend: TorchBackend, request: GenerationRequest
) -> tuple[str, list[GenerationChunk]]:
    """The whole text of a generation and all its chunks."""
    chunks = [chunk async for chunk in backend.generate(request)]
    return "".join(c.text for c in chunks), chunks


async def wait_idle(backend: TorchBackend, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = backend.health()
        if health["active"] == 0 and health["queued"] == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"worker still busy: {backend.health()}")


@pytest.mark.asyncio
async def test_chat_greedy_answers_paris(smol: TorchBackend) -> None:
    text, chunks = await collect(smol, chat(max_tokens=24))
    assert "Paris" in text
    assert text.strip() == "The capital of France is Paris."
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert final.usage is not None and final.timings is not None
    assert final.usage.completion_tokens >= 7
    assert final.timings.predicted_n == final.usage.completion_tokens
    assert all(c.finish_reason is None for c in chunks[:-1])


@pytest.mark.asyncio
async def test_chat_prompt_has_one_leading_im_start(smol: TorchBackend) -> None:
    rendered = await smol.render_chat([ChatMessage(role="user", content=FRANCE)])
    assert rendered.startswith("<|im_start|>system")
    assert rendered.endswith("<|im_start|>assistant\n")
    ids = await smol.tokenize(rendered, add_special=True)
    im_start = (await smol.tokenize("<|im_start|>", add_special=False))[0]
    assert ids[0] == im_start and ids[1] != im_start
    _, chunks = await collect(smol, chat(max_tokens=1))
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == len(ids)


@pytest.mark.asyncio
async def test_gguf_cache_is_written_once_and_reused(
    smol: TorchBackend, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    caches = [p for p in (data_dir / "models").iterdir() if p.is_dir()]
    assert [p.name.startswith("SmolLM2-135M-Instruct.Q4_1-") for p in caches] == [True]
    assert (caches[0] / "model.safetensors").is_file()
    assert (caches[0] / "tokenizer.json").is_file()

    def no_conversion(*args: object) -> None:
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(gguf_cache, "convert", no_conversion)
    second = TorchBackend(ModelSpec(name="again", backend="torch"), data_dir)
    started = time.perf_counter()
    await second.load()
    try:
        assert time.perf_counter() - started < 30
        text, _ = await collect(second, chat(max_tokens=12))
        assert "Paris" in text
    finally:
        await second.unload()


@pytest.mark.asyncio
async def test_same_seed_same_text(smol: TorchBackend) -> None:
    sampling = SamplingParams(temperature=1.0, seed=1234)
    first, _ = await collect(smol, chat(STORY, sampling=sampling, max_tokens=12))
    second, _ = await collect(smol, chat(STORY, sampling=sampling, max_tokens=12))
    assert first == second and first


@pytest.mark.asyncio
async def test_stop_string_is_not_emitted(smol: TorchBackend) -> None:
    text, chunks = await collect(smol, chat(stop=["Paris"], max_tokens=24))
    assert "Paris" not in text
    assert text.startswith("The capital of France is")
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].stop_word == "Paris"


@pytest.mark.asyncio
async def test_max_tokens_gives_length(smol: TorchBackend) -> None:
    _, chunks = await collect(smol, chat(STORY, max_tokens=5))
    final = chunks[-1]
    assert final.finish_reason == "length"
    assert final.usage is not None and final.usage.completion_tokens == 5
    assert sum(len(c.token_ids) for c in chunks) == 5


@pytest.mark.asyncio
async def test_logprobs_with_sorted_alternatives(smol: TorchBackend) -> None:
    _, chunks = await collect(smol, chat(max_tokens=6, logprobs=True, top_logprobs=3))
    entries = [lp for c in chunks for lp in c.logprobs]
    assert len(entries) == sum(len(c.token_ids) for c in chunks) > 0
    for chunk in chunks:
        assert [lp.token_id for lp in chunk.logprobs] == chunk.token_ids
    for entry in entries:
        assert entry.logprob <= 0.0
        assert len(entry.top) == 3
        values = [t.logprob for t in entry.top]
        assert values == sorted(values, reverse=True)
        assert entry.top[0].token_id == entry.token_id  # greedy picks the best
        assert entry.bytes == list(entry.token.encode("utf-8"))
    assert entries[0].token == "The"


@pytest.mark.asyncio
async def test_concurrent_generations_match_solo_ones(smol: TorchBackend) -> None:
    first = chat(request_id="a", max_tokens=10)
    second = chat(STORY, request_id="b", max_tokens=10)
    solo_a, _ = await collect(smol, first)
    solo_b, _ = await collect(smol, second)
    (both_a, chunks_a), (both_b, chunks_b) = await asyncio.gather(
        collect(smol, first), collect(smol, second)
    )
    assert (both_a, both_b) == (solo_a, solo_b)
    assert chunks_a[-1].finish_reason and chunks_b[-1].finish_reason


@pytest.mark.asyncio
async def test_closing_the_stream_early_frees_the_worker(smol: TorchBackend) -> None:
    stream = smol.generate(chat(STORY, max_tokens=200, ignore_eos=True))
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 2:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    await wait_idle(smol)
    text, _ = await collect(smol, chat(max_tokens=12))
    assert "Paris" in text


@pytest.mark.asyncio
async def test_cancelling_the_consumer_stops_the_job(smol: TorchBackend) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in smol.generate(chat(STORY, max_tokens=200, ignore_eos=True)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_idle(smol)


@pytest.mark.asyncio
async def test_worker_errors_surface_as_backend_failure(
    smol: TorchBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(smol._worker._runner, "forward", broken)
        with pytest.raises(BackendFailure, match="boom"):
            await collect(smol, chat(max_tokens=4))
    text, _ = await collect(smol, chat(max_tokens=12))
    assert "Paris" in text


@pytest.mark.asyncio
async def test_abort_by_id_ends_with_abort(smol: TorchBackend) -> None:
    chunks: list[GenerationChunk] = []
    async for chunk in smol.generate(chat(STORY, request_id="stop-me", max_tokens=200)):
        chunks.append(chunk)
        if len(chunks) == 1:
            await smol.abort("stop-me")
    final = chunks[-1]
    assert final.finish_reason == "abort"
    assert final.usage is not None and final.usage.completion_tokens < 200
    await wait_idle(smol)


@pytest.mark.asyncio
async def test_bad_token_ids_are_invalid(smol: TorchBackend) -> None:
    request = GenerationRequest(id="x", model="smol", prompt=[1, 49152], max_tokens=2)
    with pytest.raises(InvalidRequest):
        await collect(smol, request)
    biased = chat(max_tokens=2, sampling=SamplingParams(logit_bias={-1: 1.0}))
    with pytest.raises(InvalidRequest):
        await collect(smol, biased)
    with pytest.raises(InvalidRequest):
        await smol.detokenize([10**9])
    too_long = GenerationRequest(id="y", model="smol", prompt=[28] * 9000, max_tokens=2)
    with pytest.raises(InvalidRequest):
        await collect(smol, too_long)


@pytest.mark.asyncio
async def test_token_id_prompt_matches_text_prompt(smol: TorchBackend) -> None:
    rendered = await smol.render_chat([ChatMessage(role="user", content=FRANCE)])
    ids = await smol.tokenize(rendered)
    greedy = SamplingParams(temperature=0.0)
    by_text = GenerationRequest(
        id="t", model="smol", prompt=rendered, sampling=greedy, max_tokens=8
    )
    by_ids = GenerationRequest(id="i", model="smol", prompt=ids, sampling=greedy, max_tokens=8)
    assert (await collect(smol, by_text))[0] == (await collect(smol, by_ids))[0]


@pytest.mark.asyncio
async def test_tokenize_detokenize_round_trip(smol: TorchBackend) -> None:
    text = "Hello world, déjà vu! 你好 🙂"
    ids = await smol.tokenize(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert await smol.detokenize(ids) == text


def test_health_reports_the_runtime(smol: TorchBackend) -> None:
    health = smol.health()
    options = parse_options(smol.option_values(), smol.option_keys)
    assert health["device"] == "cpu" and health["dtype"] == str(options.dtype).split(".")[-1]
    assert health["context_length"] == 4096
    assert {"queued", "active"} <= set(health)
