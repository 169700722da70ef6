"""Post-sampling probabilities (llama.cpp's `post_sampling_probs`): the candidates the
sampler chain kept, with the probabilities they had after it."""

from __future__ import annotations

import math

import pytest
import torch
from gateway_engine.logprobs import post_sampling_candidates
from gateway_schemas.canonical import GenerationRequest, SamplingParams
from gateway_torch.causal import TorchBackend

INF = float("inf")


def test_candidates_are_the_survivors_most_likely_first() -> None:
    filtered = torch.tensor([[1.0, -INF, 3.0, 2.0, -INF]])
    ids, probs = post_sampling_candidates(filtered, greedy=False)
    assert ids == [2, 3, 0]
    expected = torch.softmax(torch.tensor([3.0, 2.0, 1.0]), dim=-1).tolist()
    assert probs == pytest.approx(expected)
    assert sum(probs) == pytest.approx(1.0)


def test_greedy_puts_all_the_mass_on_the_best_survivor() -> None:
    ids, probs = post_sampling_candidates(torch.tensor([0.5, -INF, 2.0, 1.0]), greedy=True)
    assert ids == [2, 3, 0] and probs == [1.0, 0.0, 0.0]


def test_nothing_survives() -> None:
    assert post_sampling_candidates(torch.full((4,), -INF), greedy=False) == ([], [])


def _request(**sampling: object) -> GenerationRequest:
    return GenerationRequest(
        id="post",
        model="smol",
        prompt="The capital of France is",
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
        max_tokens=6,
        logprobs=True,
        top_logprobs=10,
        post_sampling_probs=True,
    )


async def _entries(smol: TorchBackend, request: GenerationRequest) -> list:
    return [lp async for chunk in smol.generate(request) for lp in chunk.logprobs]


@pytest.mark.asyncio
async def test_top_k_bounds_the_candidates_and_probabilities_sum_to_one(
    smol: TorchBackend,
) -> None:
    entries = await _entries(smol, _request(temperature=0.8, top_k=3, seed=7))
    assert len(entries) == 6
    for entry in entries:
        probs = [math.exp(t.logprob) for t in entry.top]
        assert len(entry.top) == 3  # top_k kept 3 candidates: fewer than the 10 asked for
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert probs == sorted(probs, reverse=True)
        chosen = {t.token_id: p for t, p in zip(entry.top, probs, strict=True)}
        assert math.exp(entry.logprob) == pytest.approx(chosen[entry.token_id])


@pytest.mark.asyncio
async def test_greedy_gives_the_chosen_token_probability_one(smol: TorchBackend) -> None:
    entries = await _entries(smol, _request(temperature=0.0, top_k=40, min_p=0.05))
    for entry in entries:
        assert entry.logprob == 0.0
        assert entry.top[0].token_id == entry.token_id
        assert all(t.logprob == -INF for t in entry.top[1:])


@pytest.mark.asyncio
async def test_without_filters_the_alternatives_are_the_tempered_distribution(
    smol: TorchBackend,
) -> None:
    entries = await _entries(smol, _request(temperature=2.0, seed=3))
    for entry in entries:
        assert len(entry.top) == 10
        probs = [math.exp(t.logprob) for t in entry.top]
        assert 0.0 < sum(probs) < 1.0  # the whole vocabulary survived; 10 of it shown
