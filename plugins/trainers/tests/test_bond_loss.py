"""The J-BOND objective's terms against values worked out by hand on tiny tensors."""

from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace

import pytest
import torch
from gateway_trainers.bond.loss import (
    JBOND_PENALTY,
    backward_kl_loss,
    batch_baseline,
    forward_kl_loss,
    jbond_reward,
    kl_regulariser,
    mix,
    policy_returns,
    sequence_log_probs,
)
from gateway_trainers.common.batch import Batch, masked_loss

LOG16 = math.log(16.0)


def test_the_penalty_is_log_16() -> None:
    assert pytest.approx(2.772589, abs=1e-6) == JBOND_PENALTY


def test_jbond_reward_is_the_share_of_pairs_both_strictly_above() -> None:
    references = [1.0, 2.0, 3.0, 4.0]  # 6 pairs
    assert jbond_reward(0.0, references) == pytest.approx(-LOG16)  # below all: every pair
    assert jbond_reward(1.5, references) == pytest.approx(-LOG16 * 3 / 6)  # 2,3,4 above
    assert jbond_reward(2.0, references) == pytest.approx(-LOG16 * 1 / 6)  # only (3, 4)
    assert jbond_reward(2.9, references) == pytest.approx(-LOG16 * 1 / 6)
    assert jbond_reward(3.0, references) == 0.0  # one above: no pair beats it
    assert jbond_reward(9.0, references) == 0.0


def test_ties_are_never_penalised() -> None:
    assert jbond_reward(3.0, [3.0, 3.0, 3.0]) == 0.0
    assert jbond_reward(3.0, [3.0, 5.0]) == 0.0  # worse than one, tied with the other
    assert jbond_reward(3.0, [3.0, 5.0, 5.0]) == pytest.approx(-LOG16 * 1 / 3)
    assert jbond_reward(5.0, [5.0]) == 0.0


def test_a_single_reference_is_compared_alone() -> None:
    assert jbond_reward(0.2, [0.7]) == pytest.approx(-LOG16)
    assert jbond_reward(0.9, [0.7]) == 0.0
    with pytest.raises(ValueError, match="at least one reference"):
        jbond_reward(0.5, [])


def test_jbond_reward_is_the_expectation_over_pairs_of_references() -> None:
    rng = random.Random(3)
    for _ in range(20):
        references = [float(rng.randint(0, 5)) for _ in range(rng.randint(2, 7))]
        score = float(rng.randint(0, 5))
        pairs = list(itertools.combinations(references, 2))
        worse_than_both = [-LOG16 if min(a, b) > score else 0.0 for a, b in pairs]
        expected = sum(worse_than_both) / len(pairs)
        assert jbond_reward(score, references) == pytest.approx(expected, abs=1e-12)


def test_jbond_reward_depends_only_on_the_order_of_the_scores() -> None:
    references = [0.1, 0.4, 0.4, 0.8, 0.95]
    for score in (0.0, 0.1, 0.3, 0.4, 0.5, 0.9, 1.0):
        reward = jbond_reward(score, references)
        for transform in (math.exp, lambda s: 10 * s - 3, lambda s: s**3, math.atan):
            moved = jbond_reward(transform(score), [transform(r) for r in references])
            assert moved == pytest.approx(reward, abs=1e-12), (score, transform)


# Two rows of three token slots; row 1's last slot is padding holding a value that would
# show if it were counted.
TOKEN_LOGPS = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.2, -100.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_sequence_log_probs_sum_the_masked_tokens() -> None:
    assert sequence_log_probs(TOKEN_LOGPS, MASK).tolist() == pytest.approx([-3.5, -3.2])


def test_forward_term_is_the_mean_nll_over_every_token_of_the_batch() -> None:
    # (1 + 2 + 0.5 + 3 + 0.2) / 5 tokens
    assert float(forward_kl_loss(TOKEN_LOGPS, MASK)) == pytest.approx(6.7 / 5)


class _FixedLogits:
    """A stand-in model whose logits are given (all positions, or those asked for)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(
        self,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: torch.Tensor,
        use_cache: bool,
    ) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits[:, logits_to_keep])


def test_forward_term_equals_the_sft_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 5, 7), generator=generator)
    batch = Batch(
        input_ids=torch.tensor([[1, 2, 3, 4, 0], [5, 6, 2, 1, 3]]),
        attention_mask=torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
        loss_mask=torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool),
    )
    sft = masked_loss(_FixedLogits(logits), batch)
    # the same tokens read directly: position t predicts token t + 1
    logps = torch.log_softmax(logits[:, :-1], dim=-1)
    tokens = logps.gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    forward = forward_kl_loss(tokens, batch.loss_mask[:, 1:])
    assert float(forward) == pytest.approx(float(sft), abs=1e-6)


def test_returns_subtract_the_log_ratio_to_the_anchor_and_are_detached() -> None:
    policy = torch.tensor([-3.0, -5.0], requires_grad=True)
    returns = policy_returns(torch.tensor([0.0, -LOG16]), policy, torch.tensor([-4.0, -5.0]))
    # 0 - (-3 + 4) = -1; -log 16 - (-5 + 5) = -log 16
    assert returns.tolist() == pytest.approx([-1.0, -LOG16])
    assert not returns.requires_grad


def test_the_baseline_is_the_batch_mean_and_zero_alone() -> None:
    assert float(batch_baseline(torch.tensor([1.0, -2.0, 4.0]))) == pytest.approx(1.0)
    assert float(batch_baseline(torch.tensor([-2.5]))) == 0.0


def test_backward_term_with_known_returns_and_baseline() -> None:
    logps = TOKEN_LOGPS.clone().requires_grad_(True)
    returns = torch.tensor([1.0, -1.0])
    # per-token mean log-probabilities: -3.5 / 3, -3.2 / 2
    # -mean((1 - 0.5) * -3.5 / 3, (-1 - 0.5) * -1.6) = -(-0.583333 + 2.4) / 2 = -0.908333
    loss = backward_kl_loss(logps, MASK, returns, torch.tensor(0.5))
    assert float(loss.detach()) == pytest.approx(-(-0.5 * 3.5 / 3 + 1.5 * 1.6) / 2)
    loss.backward()
    # d/d logp[b, t] = -(R_b - B) / (|y_b| * samples): row 0: -0.5 / 6, row 1: 1.5 / 4
    assert logps.grad is not None
    expected = torch.tensor([[-0.5 / 6, -0.5 / 6, -0.5 / 6], [1.5 / 4, 1.5 / 4, 0.0]])
    assert torch.allclose(logps.grad, expected)
    # with no baseline: -mean(1 * -3.5 / 3, -1 * -1.6)
    plain = backward_kl_loss(TOKEN_LOGPS, MASK, returns, 0.0)
    assert float(plain) == pytest.approx(-(-3.5 / 3 + 1.6) / 2)


def test_the_regulariser_is_the_exact_kl_to_the_anchor() -> None:
    # position 0: p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    # position 1: p = (0.9, 0.1), q = p: 0;  position 2 is masked out (q very different)
    p = torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.01, 0.99]]])
    q = torch.tensor([[[0.25, 0.75], [0.9, 0.1], [0.99, 0.01]]])
    policy = p.log().requires_grad_(True)
    anchor = q.log().requires_grad_(True)
    reg = kl_regulariser(policy, anchor, torch.tensor([[1, 1, 0]]))
    assert float(reg.detach()) == pytest.approx(0.5 * math.log(4 / 3) / 2, abs=1e-6)
    reg.backward()
    assert anchor.grad is None  # the anchor is a fixed target
    assert policy.grad is not None and policy.grad[0, 0].abs().sum() > 0
    assert policy.grad[0, 2].abs().sum() == 0


def test_the_regulariser_is_zero_where_the_policy_is_the_anchor() -> None:
    logps = torch.log_softmax(torch.randn((2, 3, 5)), dim=-1)
    assert float(kl_regulariser(logps, logps.clone(), torch.ones((2, 3)))) == pytest.approx(
        0.0, abs=1e-7
    )


def test_mix_weights_the_terms() -> None:
    forward, backward, reg = torch.tensor(2.0), torch.tensor(-1.0), torch.tensor(0.5)
    result = mix(forward, backward, reg, beta=0.25, gamma=0.1)
    # 0.75 * 2 + 0.25 * -1 + 0.1 * 0.5
    assert float(result.loss) == pytest.approx(1.3)
    assert (result.forward, result.backward, result.regulariser) == (2.0, -1.0, 0.5)
    only_backward = mix(forward, backward, None, beta=1.0, gamma=0.0)
    assert float(only_backward.loss) == -1.0 and only_backward.regulariser is None


def test_beta_zero_is_the_forward_term_itself() -> None:
    forward = torch.tensor(1.2345678, requires_grad=True)
    result = mix(forward, None, None, beta=0.0, gamma=0.0)
    assert result.loss is forward and result.backward is None
    with_reg = mix(forward, None, torch.tensor(0.5), beta=0.0, gamma=0.1)
    assert float(with_reg.loss.detach()) == pytest.approx(1.2345678 + 0.05)


def test_a_weighted_term_that_is_missing_is_refused() -> None:
    with pytest.raises(ValueError, match="backward"):
        mix(torch.tensor(1.0), None, None, beta=0.5, gamma=0.0)
    with pytest.raises(ValueError, match="regulariser"):
        mix(torch.tensor(1.0), torch.tensor(0.0), None, beta=0.5, gamma=0.1)
