"""The GRPO loss against values worked out by hand on a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch
from gateway_trainers.grpo.loss import group_advantages, grpo_loss

LN2 = math.log(2.0)


def test_advantages_use_the_sample_std_plus_1e_4() -> None:
    # rewards 1, 0: mean 0.5, sample std sqrt((0.25 + 0.25) / 1) = 0.707107;
    # A = ±0.5 / (0.707107 + 0.0001) = ±0.707007
    assert group_advantages([1.0, 0.0]).tolist() == pytest.approx([0.707007, -0.707007], abs=1e-6)
    # rewards 3, 1, 2: mean 2, sample std sqrt((1 + 1 + 0) / 2) = 1; A = (1, -1, 0) / 1.0001
    assert group_advantages([3.0, 1.0, 2.0]).tolist() == pytest.approx(
        [0.99990, -0.99990, 0.0], abs=1e-5
    )


def test_one_completion_or_equal_rewards_give_zero_advantage() -> None:
    assert group_advantages([0.9]).tolist() == [0.0]
    assert group_advantages([0.5, 0.5, 0.5]).tolist() == [0.0, 0.0, 0.0]


# Two groups of two completions, three token slots each; the last completion has two tokens
# (its third slot is padding, filled with values that would dominate if it were counted).
ADVANTAGES = torch.tensor([1.0, -1.0, 0.5, -0.5])
RATIOS = torch.tensor(
    [
        [1.0, 1.5, 0.5],  # A > 0: 1.5 is clipped to 1.2; 0.5 is not (the min keeps 0.5 * A)
        [1.0, 1.5, 0.5],  # A < 0: 0.5 is clipped to 0.8; 1.5 is not (the min keeps 1.5 * A)
        [2.0, 1.0, 1.0],  # A > 0: 2.0 clipped to 1.2
        [0.5, 1.0, 100.0],  # A < 0: 0.5 clipped to 0.8; 100 is padding
    ]
)
REF_MINUS_LOGP = torch.tensor(
    [
        [0.0, LN2, 0.0],
        [-LN2, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [LN2, 0.0, 5.0],
    ]
)
MASK = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]])
LOGPS = torch.tensor(
    [
        [-1.0, -2.0, -0.5],
        [-0.3, -1.2, -2.5],
        [-0.7, -0.1, -3.0],
        [-1.5, -0.9, -4.0],
    ]
)
KL_COEFF = 0.1
CLIP = 0.2

# -min(ratio * A, clip(ratio, 0.8, 1.2) * A), per token:
#   row 0 (A = 1):    -1,   -1.2,  -0.5
#   row 1 (A = -1):    1,    1.5,   0.8
#   row 2 (A = 0.5):  -0.6, -0.5,  -0.5
#   row 3 (A = -0.5):  0.4,  0.5
# k3 KL, exp(d) - d - 1 with d = ref - logp: d = ln 2 -> 2 - 0.693147 - 1 = 0.306853;
#   d = -ln 2 -> 0.5 + 0.693147 - 1 = 0.193147; d = 0 -> 0.
# Per-token loss = surrogate term + 0.1 * KL; row sums:
#   row 0: -1 - 1.2 + 0.0306853 - 0.5 = -2.6693147
#   row 1:  1 + 0.0193147 + 1.5 + 0.8 =  3.3193147
#   row 2: -1.6
#   row 3:  0.4 + 0.0306853 + 0.5      =  0.9306853
# Sum -0.0193147 over 11 completion tokens = -0.00175588.
EXPECTED_LOSS = -0.0193147 / 11
EXPECTED_KL = (0.306853 + 0.193147 + 0.306853) / 11
EXPECTED_CLIPPED = 4 / 11  # (0,1), (1,2), (2,0), (3,0)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logps = LOGPS.clone().requires_grad_(True)
    old = LOGPS - torch.log(RATIOS)
    ref = LOGPS + REF_MINUS_LOGP
    return logps, old, ref


def test_loss_matches_the_hand_computed_value() -> None:
    logps, old, ref = _batch()
    result = grpo_loss(logps, old, ref, ADVANTAGES, MASK, clip_epsilon=CLIP, kl_coeff=KL_COEFF)
    assert result.loss.item() == pytest.approx(EXPECTED_LOSS, abs=1e-6)
    assert result.kl == pytest.approx(EXPECTED_KL, abs=1e-6)
    assert result.clipped == pytest.approx(EXPECTED_CLIPPED)


def test_without_kl_the_loss_is_the_clipped_surrogate_alone() -> None:
    logps, old, ref = _batch()
    result = grpo_loss(logps, old, ref, ADVANTAGES, MASK, clip_epsilon=CLIP, kl_coeff=0.0)
    # -1 - 1.2 - 0.5 + 1 + 1.5 + 0.8 - 1.6 + 0.4 + 0.5 = -0.1, over 11 tokens
    assert result.loss.item() == pytest.approx(-0.1 / 11, abs=1e-6)


def test_gradients_push_rewarded_tokens_up_and_clipped_ones_only_toward_the_base() -> None:
    logps, old, ref = _batch()
    grpo_loss(
        logps, old, ref, ADVANTAGES, MASK, clip_epsilon=CLIP, kl_coeff=KL_COEFF
    ).loss.backward()
    grad = logps.grad
    assert grad is not None
    # d/dlogp of -ratio * A is -ratio * A (unclipped tokens only); of 0.1 * k3 it is
    # 0.1 * (1 - exp(ref - logp)); everything over 11 tokens.
    expected = (
        torch.tensor(
            [
                [-1.0, 0.1 * (1 - 2), -0.5],  # clipped middle token: only the KL pull (ref above)
                [1.0 + 0.1 * (1 - 0.5), -1.5 * -1.0, 0.0],  # clipped last token: no gradient
                [0.0, -0.5, -0.5],
                [0.1 * (1 - 2), 0.5, 0.0],  # padding: no gradient
            ]
        )
        / 11
    )
    assert torch.allclose(grad, expected, atol=1e-6)
    # Descent raises the log-probability of positive-advantage tokens and lowers negative ones.
    assert (grad[0, [0, 2]] < 0).all() and (grad[2, 1:] < 0).all()
    assert (grad[1, :2] > 0).all() and grad[3, 1] > 0


def test_policy_equal_to_old_and_ref_gives_minus_mean_advantage() -> None:
    # At the start of a job (policy = old = base) every ratio is 1 and the KL is 0: the loss
    # is minus the token-weighted mean advantage, -(1 * 3 - 1 * 3 + 0.5 * 3 - 0.5 * 2) / 11.
    logps = LOGPS.clone().requires_grad_(True)
    result = grpo_loss(logps, LOGPS, LOGPS, ADVANTAGES, MASK, clip_epsilon=CLIP, kl_coeff=KL_COEFF)
    assert result.loss.item() == pytest.approx(-0.5 / 11, abs=1e-7)
    assert result.kl == 0.0 and result.clipped == 0.0
