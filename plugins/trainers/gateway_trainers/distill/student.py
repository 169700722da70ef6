"""The student's own answers, for the before/after table: greedy, with the chat template
serving uses, from the worker's resident base model (with an adapter attached for "after")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.training.trainer import TrainingContext

Messages = list[dict[str, str]]


def greedy_answers(
    context: TrainingContext, prompts: list[Messages], adapter: Path | None, max_tokens: int
) -> list[str]:
    import torch

    from gateway_trainers.common.base import load_base
    from gateway_trainers.common.chat import encode_completion, end_of_turn_ids
    from gateway_trainers.common.lora import _attach_stored, detach

    base = load_base(context)
    model: Any = base.model if adapter is None else _attach_stored(base, adapter)
    ends = end_of_turn_ids(base.tokenizer)
    answers: list[str] = []
    try:
        with torch.no_grad():
            for messages in prompts:
                ids, start = encode_completion(base.tokenizer, messages, "")
                answers.append(_greedy(model, ids[:start], max_tokens, ends, base, torch))
    finally:
        if adapter is not None:
            detach(model)
    return answers


def _greedy(
    model: Any, prompt: list[int], max_tokens: int, ends: frozenset[int], base: Any, torch: Any
) -> str:
    tokens: list[int] = []
    step = torch.tensor([prompt], dtype=torch.long, device=base.device)
    cache = None
    for _ in range(max_tokens):
        output = model(input_ids=step, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = output.past_key_values
        token = int(output.logits[0, -1].argmax())
        if token in ends:
            break
        tokens.append(token)
        step = torch.tensor([[token]], dtype=torch.long, device=base.device)
    return str(base.tokenizer.decode(tokens, skip_special_tokens=True)).strip()
