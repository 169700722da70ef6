"""Unit tests of gateway_engine.sampling on fixed logits."""

from __future__ import annotations

import math

import pytest
import torch
from gateway_engine import sampling
from gateway_engine.sampling import (
    apply_logit_bias,
    apply_min_p,
    apply_penalties,
    apply_top_k,
    apply_top_p,
    apply_typical_p,
    argmax_rows,
    make_generator,
    sample,
)
from gateway_schemas.canonical import SamplingParams

# Softmax of these logits: about [0.64, 0.24, 0.09, 0.03, 0.004, ...]
LOGITS = torch.tensor([[4.0, 3.0, 2.0, 1.0, -1.0, -2.0]])


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.isfinite(row).nonzero().flatten().tolist() for row in logits]


def test_top_k_keeps_k_per_row() -> None:
    batch = LOGITS.repeat(3, 1)
    out = apply_top_k(batch, torch.tensor([2, 0, 4]))
    assert kept(out) == [[0, 1], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3]]
    assert torch.equal(out[0, :2], LOGITS[0, :2])  # kept logits are untouched


def test_top_p_keeps_the_nucleus() -> None:
    batch = LOGITS.repeat(3, 1)
    out = apply_top_p(batch, torch.tensor([0.5, 0.8, 1.0]))
    assert kept(out) == [[0], [0, 1], [0, 1, 2, 3, 4, 5]]


def test_top_p_always_keeps_one_token() -> None:
    assert kept(apply_top_p(LOGITS, torch.tensor([0.0]))) == [[0]]


def test_min_p_is_relative_to_the_best_token() -> None:
    # p1/p0 = e^-1 ~ 0.37, p2/p0 = e^-2 ~ 0.14
    out = apply_min_p(LOGITS.repeat(2, 1), torch.tensor([0.3, 0.1]))
    assert kept(out) == [[0, 1], [0, 1, 2]]


def test_typical_p_drops_the_atypical() -> None:
    out = apply_typical_p(LOGITS, torch.tensor([0.5]))
    assert 0 < len(kept(out)[0]) < LOGITS.shape[1]
    assert torch.equal(apply_typical_p(LOGITS, torch.tensor([1.0])), LOGITS)


def test_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([[0.1, 5.0, 0.3], [9.0, 1.0, 2.0]])
    greedy = SamplingParams(temperature=0.0)
    chosen = sample(logits, [greedy, greedy], [[], []], [None, None])
    assert chosen.tolist() == [1, 0]


def test_argmax_rows_agrees_with_torch_on_ties_and_masked_rows() -> None:
    """NumPy's argmax on the CPU: the first of tied maxima, and index 0 for a row of -inf,
    as torch answers; other dtypes go to torch."""
    logits = torch.randn(5, 49152, generator=torch.Generator().manual_seed(3))
    logits[1] = float("-inf")
    logits[2, [7, 40000]] = 100.0
    logits[3, : logits.shape[1] // 2] = float("-inf")
    assert argmax_rows(logits).tolist() == logits.argmax(-1).tolist()
    assert argmax_rows(logits)[2] == 7
    assert argmax_rows(logits).dtype == torch.int64
    half = logits.to(torch.bfloat16)
    assert argmax_rows(half).tolist() == half.argmax(-1).tolist()


def test_logit_bias_can_ban_and_force() -> None:
    params = [SamplingParams(temperature=0.0, logit_bias={0: -100.0, 5: 100.0})]
    biased = apply_logit_bias(LOGITS, params)
    assert biased[0, 0].item() == pytest.approx(-96.0)
    assert sample(LOGITS, params, [[]], [None]).tolist() == [5]
    assert LOGITS[0, 0].item() == 4.0  # input left untouched


def test_repetition_penalty_llama_cpp_style() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    params = [SamplingParams(repeat_penalty=2.0, penalty_last_n=-1)]
    out = apply_penalties(logits, params, [[0, 1]])
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_penalty_window_and_off_switch() -> None:
    logits = torch.tensor([[2.0, 2.0, 2.0]])
    windowed = [SamplingParams(repeat_penalty=2.0, penalty_last_n=1)]
    assert apply_penalties(logits, windowed, [[0, 1]]).tolist() == [[2.0, 1.0, 2.0]]
    off = [SamplingParams(repeat_penalty=2.0, penalty_last_n=0)]
    assert apply_penalties(logits, off, [[0, 1]]).tolist() == [[2.0, 2.0, 2.0]]


def test_presence_and_frequency_penalties_openai_formula() -> None:
    logits = torch.zeros((1, 3))
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, penalty_last_n=-1)]
    out = apply_penalties(logits, params, [[0, 0, 0, 1]])
    assert out.tolist() == [[-1.25, -0.75, 0.0]]


def test_rows_keep_their_own_params() -> None:
    batch = LOGITS.repeat(2, 1)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0, logit_bias={3: 10.0}),
    ]
    assert sample(batch, params, [[], []], [None, None]).tolist() == [0, 3]


def test_seeded_sampling_is_reproducible() -> None:
    logits = torch.zeros((1, 1000))
    params = [SamplingParams(temperature=1.0, seed=7)]

    def draw(seed: int) -> list[int]:
        generator = make_generator(seed)
        return [int(sample(logits, params, [[]], [generator])[0]) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_unseeded_generators_differ() -> None:
    logits = torch.zeros((1, 1000))
    params = [SamplingParams(temperature=1.0)]
    draws = {
        tuple(int(sample(logits, params, [[]], [make_generator(None)])[0]) for _ in range(5))
        for _ in range(3)
    }
    assert len(draws) > 1


def test_temperature_sharpens_the_distribution() -> None:
    params = [SamplingParams(temperature=0.05)]
    generator = make_generator(0)
    picks = {int(sample(LOGITS, params, [[]], [generator])[0]) for _ in range(50)}
    assert picks == {0}


def test_sampling_respects_filters() -> None:
    params = [SamplingParams(temperature=5.0, top_k=2)]
    generator = make_generator(1)
    picks = {int(sample(LOGITS, params, [[]], [generator])[0]) for _ in range(100)}
    assert picks == {0, 1}


def test_plain_params_skip_every_transform() -> None:
    out = sampling.transform(LOGITS, [SamplingParams()], [[0, 1, 2]])
    assert torch.equal(out, LOGITS)
    assert math.isclose(float(torch.softmax(out, -1).sum()), 1.0, rel_tol=1e-6)


def test_temperature_is_a_step_of_the_chain() -> None:
    out = sampling.transform(LOGITS, [SamplingParams(temperature=2.0)], [[]])
    assert torch.allclose(out, LOGITS / 2.0)
    greedy = sampling.transform(LOGITS, [SamplingParams(temperature=0.0)], [[]])
    assert torch.equal(greedy, LOGITS)


def test_sampler_order_changes_what_survives() -> None:
    # min_p 0.3 at temperature 1 keeps tokens 0 and 1 (p1/p0 = 0.37); after a temperature
    # of 0.5 the ratio is e^-2 = 0.14 and only token 0 survives.
    late = SamplingParams(temperature=0.5, min_p=0.3)
    early = SamplingParams(temperature=0.5, min_p=0.3, order=["temperature", "min_p"])
    out = sampling.transform(LOGITS.repeat(2, 1), [late, early], [[], []])
    assert kept(out) == [[0, 1], [0]]


def test_a_sampler_left_out_of_the_order_is_not_applied() -> None:
    params = SamplingParams(top_k=1, top_p=0.5, order=["top_p", "temperature"])
    out = sampling.transform(LOGITS, [params], [[]])
    assert kept(out) == [[0]]
    no_filters = SamplingParams(top_k=1, order=["temperature"])
    assert kept(sampling.transform(LOGITS, [no_filters], [[]])) == [[0, 1, 2, 3, 4, 5]]


def test_top_k_and_top_p_by_topk_equal_a_full_sort_per_row():
    """`apply_top_k` takes the widest k by `topk` and `apply_top_p` orders only what top-k
    left possible; both keep exactly what sorting the whole vocabulary keeps, row by row
    (mixed k and p, rows with the filter off, and ties at the cut)."""
    from gateway_engine.sampling import apply_top_k, apply_top_p

    def by_sort_k(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        for row in range(len(k)):
            if k[row] > 0:
                kth = logits[row].sort(descending=True).values[int(k[row]) - 1]
                out[row][logits[row] < kth] = float("-inf")
        return out

    def by_sort_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        for row in range(len(p)):
            if p[row] < 1.0:
                values, order = logits[row].sort(descending=True)
                probs = torch.softmax(values, dim=-1)
                remove = (probs.cumsum(-1) - probs) >= p[row]
                remove[0] = False
                out[row][order[remove]] = float("-inf")
        return out

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 1000, generator=generator)
    logits[2, :5] = 4.0  # a tie straddling the cut of k = 3
    k = torch.tensor([40, 0, 3, 1000, 7, 40])
    p = torch.tensor([0.95, 0.5, 1.0, 0.9, 0.3, 1.0])
    kept = apply_top_k(logits, k)
    assert torch.equal(kept, by_sort_k(logits, k))
    assert torch.equal(apply_top_p(kept, p), by_sort_p(by_sort_k(logits, k), p))
    assert torch.equal(apply_top_p(logits, p), by_sort_p(logits, p))
