"""One group as tensors, and the per-token log-probabilities of its completions.

The completions of a group are left-padded to one length, so every completion ends at the
last position and the model computes logits for the last `keep + 1` positions only
(`logits_to_keep`), not for the prompt. Position ids count real tokens only, so padding
does not shift a row: its log-probabilities equal those of the row alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gateway_trainers.common.chat import encode_completion
from gateway_trainers.grpo.check import Group
from gateway_trainers.grpo.loss import group_advantages


@dataclass(frozen=True)
class GroupBatch:
    input_ids: torch.Tensor
    """(completions, length), left-padded."""
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_mask: torch.Tensor
    """(completions, keep): 1 on each row's completion tokens (its last ones)."""
    advantages: torch.Tensor
    """(completions,)"""

    @property
    def keep(self) -> int:
        return int(self.completion_mask.shape[1])

    @property
    def tokens(self) -> int:
        return int(self.completion_mask.sum())


def encode_group(tokenizer: Any, group: Group, device: torch.device) -> GroupBatch:
    """Tokenize a group's prompt + completion rows (chat template, end-of-turn token
    included in the completion) and compute its advantages."""
    rows: list[list[int]] = []
    lengths: list[int] = []
    for completion in group.completions:
        ids, start = encode_completion(tokenizer, group.messages, completion.text)
        if len(ids) <= start or start < 1:
            raise ValueError(f"The completion {completion.text[:40]!r} encodes to no tokens.")
        rows.append(ids)
        lengths.append(len(ids) - start)
    width = max(len(ids) for ids in rows)
    keep = max(lengths)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), keep), dtype=torch.float32)
    for row, (ids, length) in enumerate(zip(rows, lengths, strict=True)):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1
        mask[row, keep - length :] = 1.0
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return GroupBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        completion_mask=mask.to(device),
        advantages=group_advantages(group.rewards).to(device),
    )


def completion_logps(model: Any, batch: GroupBatch) -> torch.Tensor:
    """(completions, keep): log p(token | everything before it) for the last `keep` tokens
    of each row (padding positions hold values the mask discards)."""
    keep = batch.keep
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=keep + 1,
        use_cache=False,
    ).logits[:, :-1, :]
    targets = batch.input_ids[:, -keep:]
    logps = torch.log_softmax(logits.float(), dim=-1)
    return logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
