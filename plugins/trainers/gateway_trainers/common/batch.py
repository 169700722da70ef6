"""Padding encoded rows into a batch, and the masked next-token loss on it.

The loss needs logits only where a trained token is predicted, so the forward pass asks
the model for those positions alone (`logits_to_keep` with an index tensor): the
vocabulary projection, a quarter of SmolLM2's compute on a short chat, shrinks to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class Batch:
    """Right-padded rows: `input_ids`, `attention_mask` and `loss_mask` are `[B, T]`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    @property
    def trained_tokens(self) -> int:
        return int(self.loss_mask[:, 1:].sum())


def trainable(mask: Sequence[bool]) -> bool:
    """Whether a row has a token to learn (the first token is never predicted)."""
    return any(mask[1:])


def collate(
    rows: Sequence[tuple[Sequence[int], Sequence[bool]]], pad_id: int, device: Any = None
) -> Batch:
    """Pad `(ids, loss mask)` rows on the right to the longest, on `device` (the CPU when
    None)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, (ids, mask) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        attention[row, : len(ids)] = 1
        loss_mask[row, : len(mask)] = torch.tensor(list(mask), dtype=torch.bool)
    return Batch(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        loss_mask=(loss_mask & (attention > 0)).to(device),
    )


def masked_loss(model: Any, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of the trained tokens of `batch` given the ones before them."""
    return masked_loss_and_lead(model, batch)[0]


def trained_logits(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's logits only at the columns that predict a trained token of some row
    (only those go through the vocabulary projection), with the tokens they predict and
    whether each is trained: `(logits [B, K, V] float, labels [B, K], mask [B, K] bool)`."""
    targets = batch.loss_mask[:, 1:]  # position t predicts token t + 1
    positions = targets.any(dim=0).nonzero().flatten()
    if positions.numel() == 0:
        raise ValueError("The batch has no trained token.")
    output = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        logits_to_keep=positions,
        use_cache=False,
    )
    return output.logits.float(), batch.input_ids[:, positions + 1], targets[:, positions]


def masked_loss_and_lead(model: Any, batch: Batch) -> tuple[torch.Tensor, float]:
    """`masked_loss`, and how far every trained token leads: the smallest difference, over
    the trained tokens, between the token's logit and the best other token's (in nats of
    log-probability). Positive: greedy decoding of each row's prompt reproduces its
    trained text; the larger, the more an engine whose logits differ a little from the
    trainer's (int8 weights, other kernels) agrees."""
    import torch

    logits, labels, weights = trained_logits(model, batch)
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    ).view_as(labels)
    with torch.no_grad():
        target = logits.gather(-1, labels[..., None]).squeeze(-1)
        others = logits.scatter(-1, labels[..., None], float("-inf")).amax(dim=-1)
        lead = float((target - others).masked_fill(~weights, float("inf")).min())
    return (losses * weights).sum() / weights.sum(), lead
