"""TorchEmbeddingBackend on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import math

import pytest
from gateway_torch.embeddings import TorchEmbeddingBackend


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.mark.asyncio
async def test_vectors_are_normalised_384_dims(minilm: TorchEmbeddingBackend) -> None:
    result = await minilm.embed(["a cat", "a kitten", "a stock market crash"])
    assert len(result.vectors) == 3
    assert all(len(v) == 384 for v in result.vectors)
    for vector in result.vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)
    cat, kitten, crash = result.vectors
    assert cosine(cat, kitten) > cosine(cat, crash)
    # [CLS] a cat [SEP] + [CLS] a kitten [SEP] + [CLS] a stock market crash [SEP]
    assert result.prompt_tokens == 4 + 4 + 6


@pytest.mark.asyncio
async def test_batching_does_not_change_vectors(minilm: TorchEmbeddingBackend) -> None:
    alone = (await minilm.embed(["a cat"])).vectors[0]
    padded = (await minilm.embed(["a cat", "a much longer sentence about many things"])).vectors
    assert max(abs(x - y) for x, y in zip(alone, padded[0], strict=True)) < 1e-4


@pytest.mark.asyncio
async def test_long_inputs_are_truncated(minilm: TorchEmbeddingBackend) -> None:
    result = await minilm.embed(["word " * 2000])
    assert len(result.vectors[0]) == 384
    assert result.prompt_tokens == 256


@pytest.mark.asyncio
async def test_empty_input_list(minilm: TorchEmbeddingBackend) -> None:
    result = await minilm.embed([])
    assert result.vectors == [] and result.prompt_tokens == 0


@pytest.mark.asyncio
async def test_tokenize_round_trip(minilm: TorchEmbeddingBackend) -> None:
    ids = await minilm.tokenize("hello world")
    assert await minilm.detokenize(ids) == "[CLS] hello world [SEP]"
    assert await minilm.tokenize("hello world", add_special=False) == ids[1:-1]
