"""Each extended sampler on a fixed logits vector, showing its effect."""

from __future__ import annotations

import math

import torch
from gateway_engine.sampling import make_generator, sample, transform
from gateway_engine.sampling_extra import (
    RowState,
    apply_banned_sequences,
    apply_dry,
    apply_temperature_step,
    apply_tfs,
    apply_top_a,
    apply_top_n_sigma,
    apply_xtc,
    dry_lengths,
    mirostat_draw,
)
from gateway_schemas.canonical import SamplingParams

# Softmax: about [0.64, 0.24, 0.09, 0.03, 0.004, 0.002]
LOGITS = torch.tensor([[4.0, 3.0, 2.0, 1.0, -1.0, -2.0]])
PROBS = torch.softmax(LOGITS, dim=-1)[0]


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_top_a_removes_exactly_the_tokens_below_top_a_p_max_squared() -> None:
    for top_a in (0.2, 0.5, 1.0):
        floor = top_a * float(PROBS.max()) ** 2
        expected = [i for i, p in enumerate(PROBS.tolist()) if p >= floor]
        assert kept(apply_top_a(LOGITS, torch.tensor([top_a]))) == expected
    assert kept(apply_top_a(LOGITS, torch.tensor([0.0]))) == list(range(6))


def test_tail_free_cuts_the_flat_tail() -> None:
    assert kept(apply_tfs(LOGITS, torch.tensor([1.0]))) == list(range(6))
    small = kept(apply_tfs(LOGITS, torch.tensor([0.5])))
    large = kept(apply_tfs(LOGITS, torch.tensor([0.95])))
    assert small == list(range(len(small))) and large == list(range(len(large)))
    assert 1 <= len(small) < len(large) < 6


def test_top_n_sigma_keeps_logits_within_n_deviations_of_the_best() -> None:
    std = float(LOGITS[0].std(unbiased=False))
    for n in (0.5, 1.0, 2.0):
        expected = [i for i, v in enumerate(LOGITS[0].tolist()) if v >= 4.0 - n * std]
        assert kept(apply_top_n_sigma(LOGITS, torch.tensor([n]))) == expected


def test_xtc_removes_the_top_choices_above_threshold_but_the_least_likely() -> None:
    always = SamplingParams(xtc_probability=1.0, xtc_threshold=0.05)
    out = apply_xtc(LOGITS, [always], [make_generator(0)])
    # 0.64, 0.24 and 0.09 are above 0.05: the two most likely go, 0.09 stays.
    assert kept(out) == [2, 3, 4, 5]
    single = SamplingParams(xtc_probability=1.0, xtc_threshold=0.5)
    assert kept(apply_xtc(LOGITS, [single], [make_generator(0)])) == list(range(6))
    never = SamplingParams(xtc_probability=0.0, xtc_threshold=0.05)
    assert torch.equal(apply_xtc(LOGITS, [never], [make_generator(0)]), LOGITS)


def test_xtc_fires_with_its_probability() -> None:
    half = SamplingParams(xtc_probability=0.5, xtc_threshold=0.05)
    generator = make_generator(7)
    fired = sum(len(kept(apply_xtc(LOGITS, [half], [generator]))) < 6 for _ in range(400))
    assert 150 < fired < 250


def test_dry_finds_the_repeat_each_continuation_would_extend() -> None:
    history = [1, 2, 3, 9, 1, 2, 3]
    # "1 2 3" occurred before, followed by 9: generating 9 again repeats 3 tokens.
    assert dry_lengths(history, frozenset()) == {9: 3}
    # A breaker inside the match cuts it short.
    assert dry_lengths(history, frozenset({1})) == {9: 2}
    assert dry_lengths([5, 6, 7], frozenset()) == {}


def test_dry_penalises_a_repeated_sequence() -> None:
    logits = torch.zeros(1, 12)
    history = [1, 2, 3, 9, 1, 2, 3]
    params = SamplingParams(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
    out = apply_dry(logits, [params], [history], [RowState()])
    assert math.isclose(float(out[0, 9]), -0.8 * 1.75 ** (3 - 2), rel_tol=1e-6)
    assert int((out[0] != 0).sum()) == 1  # only the repeating continuation
    short = SamplingParams(dry_multiplier=0.8, dry_allowed_length=4)
    assert torch.equal(apply_dry(logits, [short], [history], [RowState()]), logits)


def test_banned_sequence_is_never_completed() -> None:
    params = SamplingParams(banned_sequences=[[4, 2], [5]])
    after_head = apply_banned_sequences(LOGITS, [params], [[0, 4]])
    assert kept(after_head) == [0, 1, 3, 4]
    elsewhere = apply_banned_sequences(LOGITS, [params], [[0, 3]])
    assert kept(elsewhere) == [0, 1, 2, 3, 4]


def test_smoothing_keeps_the_best_and_pushes_the_rest_down_quadratically() -> None:
    params = SamplingParams(temperature=1.0, smoothing_factor=0.5)
    out = apply_temperature_step(LOGITS, [params])[0]
    expected = [4.0 - 0.5 * (v - 4.0) ** 2 for v in LOGITS[0].tolist()]
    assert torch.allclose(out, torch.tensor(expected))


def test_dynamic_temperature_follows_the_entropy() -> None:
    params = SamplingParams(temperature=1.0, dynatemp_range=0.5)
    flat = torch.zeros(1, 6)
    peaked = torch.tensor([[20.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # Uniform: normalised entropy 1, temperature 1.5. Peaked: entropy ~0, temperature 0.5.
    assert torch.allclose(apply_temperature_step(flat + 3.0, [params]), (flat + 3.0) / 1.5)
    assert torch.allclose(apply_temperature_step(peaked, [params]), peaked / 0.5, atol=1e-3)


def test_mirostat_adapts_its_target_towards_tau() -> None:
    logits = torch.linspace(5.0, -5.0, 50)
    for mode in (1, 2):
        params = SamplingParams(mirostat=mode, mirostat_tau=3.0, mirostat_eta=0.1)
        state, generator = RowState(), make_generator(mode)
        surprises = []
        for _ in range(300):
            token = mirostat_draw(logits, params, state, generator)
            surprises.append(-math.log2(float(torch.softmax(logits, -1)[token])))
        assert state.mirostat_mu is not None
        late = sum(surprises[-150:]) / 150
        assert abs(late - 3.0) < 1.0, (mode, late)


def test_mirostat_through_sample_keeps_state_per_row() -> None:
    params = SamplingParams(temperature=1.0, mirostat=2, mirostat_tau=2.0, seed=3)
    states = [RowState(), RowState()]
    generators = [make_generator(1), make_generator(2)]
    sample(LOGITS.repeat(2, 1), [params, params], [[], []], generators, states)
    assert all(s.mirostat_mu is not None for s in states)


def test_kobold_order_puts_temperature_first() -> None:
    params = SamplingParams(temperature=0.5, top_a=0.3, order=["temperature", "top_a"])
    late = SamplingParams(temperature=0.5, top_a=0.3)
    assert kept(transform(LOGITS, [params], [[]])) == [0]
    assert kept(transform(LOGITS, [late], [[]])) == [0, 1]
