"""`finetune`: NPU-STACK-style LoRA fine-tune jobs on dataset rows, in padded batches.

A row is one of:
- `{"messages": [...]}`: a chat, the loss on the assistant turns;
- `{"prompt", "completion"}`: the loss on the completion only. A string prompt is plain
  text (no chat template); a list of messages is a chat prompt, and the completion is
  the assistant's reply to it;
- `{"text"}`: plain text, the loss on every token.

Rows are cut to `max_length` tokens and grouped `batch_size` at a time (right-padded,
with an attention mask), in a seeded shuffled order per epoch.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, ClassVar

from gateway.errors import InvalidRequest
from gateway.jobs.store import Job
from gateway.training.trainer import Trainer, TrainingContext
from gateway_trainers.common.checks import (
    check_list,
    check_messages,
    check_training_config,
    positive_int,
)

DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 4,
    "learning_rate": 2e-4,
    "lora_rank": 16,
    "lora_alpha": 32.0,
    "max_length": 512,
    "base_adapter": None,
    "checkpoint_interval": None,
    "seed": None,
    "stop_loss": None,
    "stop_when_learned": False,
}
"""NPU-STACK's `/api/finetune/start` defaults, for keys a job's config lacks."""

LOG_LINES = 100
"""About this many step lines per job in its log (every step for short jobs)."""


def row_format(row: Any, param: str) -> str:
    """Which of the three row formats `row` is (`messages`, `prompt`, `text`); a 400
    naming the row otherwise."""
    if not isinstance(row, dict):
        raise InvalidRequest(
            "A row must be an object: `messages`, `prompt` + `completion`, or `text`.",
            param=param,
        )
    if "messages" in row:
        check_messages(row["messages"], f"{param}.messages")
        return "messages"
    if "prompt" in row or "completion" in row:
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, list):
            check_messages(prompt, f"{param}.prompt", needs_assistant=False)
        elif not isinstance(prompt, str):
            raise InvalidRequest(
                "`prompt` must be a string or a list of messages.", param=f"{param}.prompt"
            )
        if not isinstance(completion, str) or not completion:
            raise InvalidRequest(
                "`completion` must be a non-empty string.", param=f"{param}.completion"
            )
        return "prompt"
    if isinstance(row.get("text"), str) and row["text"]:
        return "text"
    raise InvalidRequest(
        "A row needs `messages`, `prompt` + `completion`, or a non-empty `text`.", param=param
    )


def encode_row(
    tokenizer: Any, row: dict[str, Any], max_length: int
) -> tuple[list[int], list[bool]]:
    """Token ids and loss mask of one (checked) row."""
    from gateway_trainers.common.chat import (
        encode_chat,
        encode_completion,
        encode_prompt_completion,
        encode_text,
    )

    kind = row_format(row, "row")
    if kind == "messages":
        return encode_chat(tokenizer, row["messages"], max_length)
    if kind == "text":
        return encode_text(tokenizer, row["text"], max_length)
    if isinstance(row["prompt"], list):
        ids, start = encode_completion(tokenizer, row["prompt"], row["completion"])
        mask = [index >= start for index in range(len(ids))]
        return ids[:max_length], mask[:max_length]
    return encode_prompt_completion(tokenizer, row["prompt"], row["completion"], max_length)


class FinetuneTrainer(Trainer):
    """LoRA fine-tuning on dataset rows (NPU-STACK's `POST /api/finetune/start`)."""

    name: ClassVar[str] = "finetune"
    data_param: ClassVar[str] = "dataset"

    def check(self, data: Any, config: dict[str, Any]) -> None:
        check_training_config(config, prefix="")
        positive_int(config, "batch_size", "", optional=True)
        positive_int(config, "max_length", "", optional=True)
        for index, row in enumerate(check_list(data, self.data_param, "rows")):
            row_format(row, f"{self.data_param}[{index}]")

    def prepare(self, context: TrainingContext) -> None:
        from gateway_trainers.common.base import load_base

        load_base(context)

    def run(self, job: Job, context: TrainingContext) -> Path:
        from gateway_trainers.common.base import load_base
        from gateway_trainers.common.batch import collate, masked_loss_and_lead, trainable
        from gateway_trainers.common.loop import Loop, seed_everything
        from gateway_trainers.common.lora import attach_lora, detach, save_adapter

        config = {**DEFAULTS, **{k: v for k, v in job.config.items() if v is not None}}
        base = load_base(context)
        max_length = int(config["max_length"])
        rows = [encode_row(base.tokenizer, row, max_length) for row in job.data]
        kept = [row for row in rows if trainable(row[1])]
        if not kept:
            raise ValueError(f"No row has a token to learn within max_length {max_length}.")
        if len(kept) < len(rows):
            context.log(f"{len(rows) - len(kept)} rows have nothing to learn; skipped")
        size = min(int(config["batch_size"]), len(kept))
        epochs = int(config["epochs"])
        per_epoch = math.ceil(len(kept) / size)
        total = epochs * per_epoch
        seed = seed_everything(config, context)
        order = random.Random(seed)
        context.log(
            f"{len(kept)} rows, batch size {size}, {epochs} epochs = {total} steps, "
            f"lr {config['learning_rate']}"
        )
        model = attach_lora(base, config, context)
        try:
            loop = Loop(
                model,
                context,
                config,
                output_name=job.output_name,
                total_steps=total,
                log_every=max(1, total // LOG_LINES),
            )
            for epoch in range(epochs):
                indices = list(range(len(kept)))
                order.shuffle(indices)
                fitting = 0
                for number, start in enumerate(range(0, len(indices), size), start=1):
                    chosen = [kept[i] for i in indices[start : start + size]]
                    batch = collate(chosen, base.tokenizer.pad_token_id, base.device)
                    loss, lead = masked_loss_and_lead(model, batch)
                    if loop.fits(loss, lead):
                        fitting += 1
                        continue
                    loop.step(loss, epoch + number / per_epoch, lead)
                if fitting == per_epoch:
                    loop.stopped_early(float(loss.detach()))
                    break
            return save_adapter(model, context, job.output_name)
        finally:
            detach(model)
