"""The GRPO objective as pure tensor functions (no model): TRL's `GRPOTrainer` loss.

For the completions `i` of one prompt's group, with rewards `r_i`:

- advantage `A_i = (r_i - mean(r)) / (std(r) + 1e-4)`, with the *sample* standard deviation
  (divisor `n - 1`) and `eps = 1e-4`, as TRL normalises (`scale_rewards`). Kiln divides by the
  population std plus `1e-8`: a two-completion group then gets `A = ±1` instead of `±0.707`
  (only a rescaling of the step), and a near-tie (rewards 0.5 and 0.5001) gets full-size
  advantages, which `1e-4` shrinks (to ±0.29). A group with one completion (nothing to
  compare with; the sample std is undefined) or with equal rewards gets `A = 0`.
- per completion token `t`: `ratio = exp(logp - old_logp)`, `old_logp` the policy at the start
  of the job (detached); surrogate `min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`;
  KL against the base (reference) model with TRL's k3 estimator
  `kl = exp(ref - logp) - (ref - logp) - 1` (never negative, zero where the policy agrees with
  the base); per-token loss `-surrogate + kl_coeff * kl`.
- aggregation: TRL's default (`bnpo`, later generalised as `dapo`): the sum of the per-token
  losses over every completion token of the batch divided by the number of those tokens, so a
  long completion weighs in proportion to its length (not the per-sequence mean of the
  original GRPO paper, which favours short right answers and long wrong ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

ADVANTAGE_EPS = 1e-4
"""Added to the group's std before dividing (TRL's value)."""


def group_advantages(rewards: Sequence[float], eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """The advantages of one group's completions: rewards centred on the group mean and
    divided by the group's sample std plus `eps`; zeros for a group of one."""
    values = torch.tensor([float(r) for r in rewards], dtype=torch.float64)
    if values.numel() < 2:
        return torch.zeros_like(values, dtype=torch.float32)
    centred = values - values.mean()
    return (centred / (values.std(unbiased=True) + eps)).to(torch.float32)


@dataclass(frozen=True)
class GrpoLoss:
    """The scalar loss to differentiate, and detached measures of the batch."""

    loss: torch.Tensor
    kl: float
    """Mean k3 KL to the base model over completion tokens."""
    clipped: float
    """Share of completion tokens whose ratio was clipped (their surrogate has no gradient)."""


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_epsilon: float,
    kl_coeff: float,
) -> GrpoLoss:
    """The GRPO loss of a batch of completions.

    `logps`, `old_logps`, `ref_logps` and `mask` are `(batch, tokens)`: the log-probability of
    each completion token under the policy being trained (with gradient), under the policy at
    the start of the job, and under the base model; `mask` is 1 on completion tokens and 0 on
    padding. `advantages` is `(batch,)`.
    """
    weights = mask.to(logps.dtype)
    old = old_logps.detach()
    ref = ref_logps.detach()
    advantage = advantages.to(logps.dtype).unsqueeze(1)
    ratio = torch.exp(logps - old)
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon)
    surrogate = torch.minimum(ratio * advantage, clipped_ratio * advantage)
    per_token = -surrogate
    log_ref_ratio = ref - logps
    kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1.0
    if kl_coeff:
        per_token = per_token + kl_coeff * kl
    tokens = weights.sum().clamp(min=1.0)
    loss = (per_token * weights).sum() / tokens
    with torch.no_grad():
        is_clipped = ((ratio < 1.0 - clip_epsilon) & (advantage < 0)) | (
            (ratio > 1.0 + clip_epsilon) & (advantage > 0)
        )
        mean_kl = float((kl * weights).sum() / tokens)
        clipped = float((is_clipped.to(weights.dtype) * weights).sum() / tokens)
    return GrpoLoss(loss=loss, kl=mean_kl, clipped=clipped)
