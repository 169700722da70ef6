"""One group as tensors, and the per-token log-probabilities of its completions.

The completions of a group share their prompt, so the model reads the prompt once: a pass
over the prompt alone fills a key/value cache (with gradient: the LoRA acts on prompt tokens
too), the cache is repeated for each completion, and one pass over the right-padded
completions continues from it. A group of `n` completions of `c` tokens after a `p`-token
prompt costs `p + n * c` token passes instead of `n * (p + c)`; with the chat template's
system prompt, `p` is most of a short completion's row. The log-probabilities equal those
of each prompt + completion row read alone (tested).

The logits of a pass are `rows x tokens x vocabulary` floats, kept for the backward pass:
a big group (Kiln's guide uses 64 completions) is split into chunks of at most
`CHUNK_TOKENS` padded completion tokens, each read (prompt included) and back-propagated on
its own; the advantages are computed over the whole group first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gateway_trainers.common.chat import encode_completion
from gateway_trainers.grpo.check import Group
from gateway_trainers.grpo.loss import group_advantages

CHUNK_TOKENS = 2048
"""Padded completion tokens per pass: 2048 x SmolLM2's 49152-word vocabulary is 400 MB of
float32 logits, about as much again for their log-softmax."""


@dataclass(frozen=True)
class GroupBatch:
    prompt_ids: torch.Tensor
    """(1, prompt length)"""
    completion_ids: torch.Tensor
    """(completions, longest completion), right-padded."""
    completion_mask: torch.Tensor
    """(completions, longest completion): 1 on tokens, 0 on padding (float)."""
    advantages: torch.Tensor
    """(completions,)"""

    @property
    def tokens(self) -> int:
        return int(self.completion_mask.sum())

    def chunks(self, max_tokens: int = CHUNK_TOKENS) -> list[GroupBatch]:
        """The group as consecutive runs of completions of at most `max_tokens` padded
        tokens each (one completion per chunk at least), each trimmed to its longest."""
        lengths = [int(n) for n in self.completion_mask.sum(dim=1).tolist()]
        chunks: list[GroupBatch] = []
        start = 0
        while start < len(lengths):
            end, width = start + 1, lengths[start]
            while end < len(lengths) and (end - start + 1) * max(width, lengths[end]) <= max_tokens:
                width = max(width, lengths[end])
                end += 1
            chunks.append(
                GroupBatch(
                    prompt_ids=self.prompt_ids,
                    completion_ids=self.completion_ids[start:end, :width],
                    completion_mask=self.completion_mask[start:end, :width],
                    advantages=self.advantages[start:end],
                )
            )
            start = end
        return chunks


def encode_group(tokenizer: Any, group: Group, device: torch.device) -> GroupBatch:
    """Tokenize a group's prompt (chat template with the generation prompt) and its
    completions (each with its end-of-turn token), and compute the advantages."""
    prompt: list[int] | None = None
    completions: list[list[int]] = []
    for completion in group.completions:
        ids, start = encode_completion(tokenizer, group.messages, completion.text)
        if start < 1 or len(ids) <= start:
            raise ValueError(f"The completion {completion.text[:40]!r} encodes to no tokens.")
        if prompt is None:
            prompt = ids[:start]
        elif ids[:start] != prompt:  # a prompt is rendered the same for every completion
            raise ValueError("The completions of a group do not share their prompt tokens.")
        completions.append(ids[start:])
    assert prompt is not None
    width = max(len(ids) for ids in completions)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    completion_ids = torch.full((len(completions), width), pad, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.float32)
    for row, ids in enumerate(completions):
        completion_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1.0
    return GroupBatch(
        prompt_ids=torch.tensor([prompt], dtype=torch.long, device=device),
        completion_ids=completion_ids.to(device),
        completion_mask=mask.to(device),
        advantages=group_advantages(group.rewards).to(device),
    )


def completion_logps(model: Any, batch: GroupBatch) -> torch.Tensor:
    """(completions, longest completion): log p(token | prompt and the completion's tokens
    before it) for every completion token (padding positions hold values the mask
    discards). Differentiable when called with gradients enabled."""
    rows, width = batch.completion_ids.shape
    prompt_length = batch.prompt_ids.shape[1]
    head = model(input_ids=batch.prompt_ids, use_cache=True, logits_to_keep=1)
    cache = head.past_key_values
    cache.batch_repeat_interleave(rows)
    attention = torch.cat(
        [
            torch.ones((rows, prompt_length), dtype=torch.long, device=batch.prompt_ids.device),
            batch.completion_mask.to(torch.long),
        ],
        dim=1,
    )
    positions = torch.arange(prompt_length, prompt_length + width, device=attention.device)
    tail = model(
        input_ids=batch.completion_ids,
        attention_mask=attention,
        position_ids=positions.unsqueeze(0).expand(rows, width),
        past_key_values=cache,
        use_cache=True,
    )
    # The prompt's last logits predict each completion's first token; the completion's own
    # logits predict the rest (its last position predicts nothing we score).
    logits = torch.cat(
        [head.logits[:, -1:, :].expand(rows, 1, -1), tail.logits[:, :-1, :]], dim=1
    ).float()
    logps = torch.log_softmax(logits, dim=-1)
    return logps.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
