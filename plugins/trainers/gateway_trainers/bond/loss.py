"""The J-BOND objective as pure tensor functions (no model).

J-BOND (Sessa et al. 2024, "BOND: Aligning LLMs with Best-of-N Distillation", arXiv
2407.14622) moves a policy towards the Best-of-N distribution of a reference policy with a
Jeffreys divergence: a forward KL (mode covering) and a backward KL (mode seeking) mixed by
`beta`, plus a KL to an exponential moving average of the policy (the anchor). Here the
Best-of-N comes from a teacher: the job gives, per prompt, the teacher's best response and
its N scored samples. Per step, over the batch's prompts:

- forward term `FW`: the negative log-likelihood of the best response given the prompt,
  summed over its tokens and divided by their number (over the whole batch): exactly the
  `sft` trainer's loss (`common.batch.masked_loss`).
- backward term `BW`, a policy gradient on a sample `y` of the policy for each prompt:
  `R(y) = r_J(y) - (log pi(y) - log pi_anchor(y))` (sequence log-probabilities, detached),
  `r_J` J-BOND's reward (`jbond_reward`), the baseline `B` the batch mean of `R` (0 for a
  batch of one), and `BW = -mean over samples of (R - B) * log pi(y) / |y|`: each sample's
  log-probability divided by its number of tokens, so that `BW`'s gradient has the scale
  of a per-token mean like `FW`'s (a long sample does not outweigh a short one).
- regulariser `REG`: `KL(pi || pi_anchor)`, exact over the vocabulary at each position,
  averaged over the positions (the sampled tokens); its gradient reaches the policy only.
- `loss = (1 - beta) * FW + beta * BW + gamma * REG` (`mix`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

JBOND_PENALTY = math.log(16.0)
"""J-BOND's reward of a sample worse than both of two reference samples (0 otherwise)."""


def jbond_reward(score: float, references: Sequence[float]) -> float:
    """J-BOND's reward of a sample scored `score` against the teacher's samples scored
    `references`: `-log 16` times the share of pairs `(i < j)` of references whose scores
    are both strictly above `score`, the exact expectation of "-log 16 when worse than both
    of two references drawn without replacement". A tie is never penalised; with a single
    reference, `-log 16` when that one is strictly above. Only the order of the scores
    matters (the same for any increasing transform of all of them)."""
    count = len(references)
    if count == 0:
        raise ValueError("J-BOND needs at least one reference score.")
    above = sum(1 for reference in references if reference > score)
    if count == 1:
        return -JBOND_PENALTY * above
    return -JBOND_PENALTY * (above * (above - 1)) / (count * (count - 1))


def sequence_log_probs(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`(batch,)`: each row's summed log-probability over its masked tokens; `token_logps`
    and `mask` are `(batch, tokens)`, `mask` 1 on tokens and 0 on padding."""
    return (token_logps * mask.to(token_logps.dtype)).sum(dim=1)


def forward_kl_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`FW`: the mean negative log-likelihood of the best responses' tokens (`(batch,
    tokens)` log-probabilities under the policy, `mask` 1 on the tokens), the sum over
    every token of the batch divided by their number, as the `sft` loss."""
    weights = mask.to(token_logps.dtype)
    return -(token_logps * weights).sum() / weights.sum().clamp(min=1.0)


def policy_returns(
    rewards: torch.Tensor, policy_logps: torch.Tensor, anchor_logps: torch.Tensor
) -> torch.Tensor:
    """`R = r_J - (log pi(y) - log pi_anchor(y))` per sample (all `(batch,)`), detached."""
    return (rewards - (policy_logps - anchor_logps)).detach()


def batch_baseline(returns: torch.Tensor) -> torch.Tensor:
    """`B`: the mean of the returns over the batch; 0 for a batch of one sample (its own
    return as a baseline would cancel the gradient)."""
    if returns.numel() < 2:
        return torch.zeros((), dtype=returns.dtype, device=returns.device)
    return returns.detach().mean()


def backward_kl_loss(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    returns: torch.Tensor,
    baseline: torch.Tensor | float,
) -> torch.Tensor:
    """`BW = -mean over samples of (R - B) * log pi(y) / |y|`: `token_logps` and `mask` are
    `(samples, tokens)` (the policy's log-probability of each sampled token, with gradient;
    1 on tokens, 0 on padding), `returns` is `(samples,)`, `baseline` a scalar."""
    weights = mask.to(token_logps.dtype)
    lengths = weights.sum(dim=1).clamp(min=1.0)
    per_token = (token_logps * weights).sum(dim=1) / lengths
    advantages = (returns - baseline).detach().to(token_logps.dtype)
    return -(advantages * per_token).mean()


def kl_regulariser(
    policy_logps: torch.Tensor, anchor_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """`REG = KL(pi || pi_anchor)` at each position, exact over the vocabulary, averaged
    over the masked positions: `policy_logps` and `anchor_logps` are `(batch, positions,
    vocabulary)` log-distributions (the anchor's detached), `mask` `(batch, positions)`."""
    anchor = anchor_logps.detach()
    per_position = (policy_logps.exp() * (policy_logps - anchor)).sum(dim=-1)
    weights = mask.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp(min=1.0)


@dataclass(frozen=True)
class BondLoss:
    """The scalar loss to differentiate, and its terms' values."""

    loss: torch.Tensor
    forward: float
    backward: float | None
    """None when `beta` is 0 (no policy samples)."""
    regulariser: float | None
    """None when `gamma` is 0."""


def mix(
    forward: torch.Tensor,
    backward: torch.Tensor | None,
    regulariser: torch.Tensor | None,
    *,
    beta: float,
    gamma: float,
) -> BondLoss:
    """`loss = (1 - beta) * FW + beta * BW + gamma * REG`. A term whose weight is 0 is
    left out (it may be None): with `beta` = `gamma` = 0 the loss is `FW` itself."""
    loss = forward
    if beta:
        if backward is None:
            raise ValueError("beta > 0 needs the backward term.")
        loss = (1.0 - beta) * forward + beta * backward
    if gamma:
        if regulariser is None:
            raise ValueError("gamma > 0 needs the regulariser.")
        loss = loss + gamma * regulariser
    return BondLoss(
        loss=loss,
        forward=float(forward.detach()),
        backward=float(backward.detach()) if beta and backward is not None else None,
        regulariser=float(regulariser.detach()) if gamma and regulariser is not None else None,
    )
