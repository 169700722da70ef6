"""What the `bond` trainer does with the model: sample the policy, read log-probabilities,
keep the EMA anchor. Imported by the trainer inside `run` (torch at module level).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from gateway_trainers.common.batch import Batch, collate, trained_logits


@dataclass(frozen=True)
class LogProbs:
    """The model's next-token log-distributions where a row's trained tokens are predicted.

    `positions` index the columns of the batch that predict a trained token of some row;
    `mask[b, k]` says whether column `k` predicts a trained token of row `b`."""

    distributions: torch.Tensor
    """(rows, positions, vocabulary) log-softmax."""
    tokens: torch.Tensor
    """(rows, positions): the log-probability of the token that follows."""
    mask: torch.Tensor
    """(rows, positions) float: 1 where the token is trained, 0 elsewhere."""


def completion_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    device: Any,
) -> Batch:
    """Rows of prompt + completion tokens, right-padded, the loss mask on the completions."""
    rows = [
        ([*prompt, *completion], [False] * len(prompt) + [True] * len(completion))
        for prompt, completion in zip(prompts, completions, strict=True)
    ]
    return collate(rows, pad_id, device)


def log_probs(model: Any, batch: Batch) -> LogProbs:
    """The log-distributions predicting `batch`'s trained tokens (with gradient unless
    called under `torch.no_grad`), from `common.batch.trained_logits`."""
    logits, labels, trained = trained_logits(model, batch)
    distributions = torch.log_softmax(logits, dim=-1)
    tokens = distributions.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return LogProbs(distributions, tokens, trained.float())


@torch.no_grad()
def sample(
    model: Any,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    ends: frozenset[int],
    device: Any,
) -> list[int]:
    """One response of the model to `prompt`, drawn token by token from its softmax at
    `temperature` (no top-k or top-p: at 1.0 exactly the policy's distribution), up to and
    including the first end-of-turn token, at most `max_new_tokens`. Uses torch's global
    generator (seeded by the job)."""
    tokens: list[int] = []
    step_ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    cache = None
    for _ in range(max_new_tokens):
        output = model(input_ids=step_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = output.past_key_values
        probabilities = torch.softmax(output.logits[0, -1].float() / temperature, dim=-1)
        token = int(torch.multinomial(probabilities, 1))
        tokens.append(token)
        if token in ends:
            break
        step_ids = torch.tensor([[token]], dtype=torch.long, device=device)
    return tokens


class EmaAnchor:
    """The anchor policy: an exponential moving average of the trainable (LoRA) weights,
    `anchor <- (1 - rate) * anchor + rate * weights` after each optimizer step, starting
    equal to them. The base weights are shared: `swapped_in` puts the anchor's values into
    the LoRA tensors for a forward pass and the policy's back afterwards.

    Run the anchor's passes before the policy's pass with gradient: swapping writes the
    tensors in place, which autograd refuses under a graph that saved them."""

    def __init__(self, parameters: Sequence[torch.Tensor], rate: float):
        self.parameters = list(parameters)
        self.rate = float(rate)
        with torch.no_grad():
            self.weights = [parameter.detach().clone() for parameter in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        """Move the anchor towards the current weights (after an optimizer step)."""
        for anchor, parameter in zip(self.weights, self.parameters, strict=True):
            anchor.lerp_(parameter.detach(), self.rate)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model computes with the anchor's weights inside, without gradient."""
        with torch.no_grad():
            saved = [parameter.detach().clone() for parameter in self.parameters]
            for parameter, anchor in zip(self.parameters, self.weights, strict=True):
                parameter.copy_(anchor)
            try:
                yield
            finally:
                for parameter, policy in zip(self.parameters, saved, strict=True):
                    parameter.copy_(policy)
