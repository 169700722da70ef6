"""`sft`: LoRA supervised fine-tuning on chats, the loss on the assistant turns only.

Data: `[{"messages": [{"role", "content"}, ...]}, ...]` (Kiln's `examples`). One
optimizer step per example per epoch, examples in a seeded shuffled order. The module
imports no torch: `run` does, in the training worker.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

from gateway.errors import InvalidRequest
from gateway.jobs.store import Job
from gateway.training.trainer import Trainer, TrainingContext
from gateway_trainers.common.checks import check_list, check_messages, check_training_config

DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "learning_rate": 1e-4,
    "lora_rank": 16,
    "lora_alpha": 32.0,
    "base_adapter": None,
    "checkpoint_interval": None,
    "seed": None,
    "stop_loss": None,
    "stop_when_learned": False,
}
"""Kiln's request defaults, used for keys a job's config lacks."""


class SftTrainer(Trainer):
    """LoRA SFT on chat examples (Kiln's `POST /v1/train/sft`)."""

    name: ClassVar[str] = "sft"
    data_param: ClassVar[str] = "examples"

    def check(self, data: Any, config: dict[str, Any]) -> None:
        check_training_config(config)
        examples = check_list(data, self.data_param, "examples")
        for index, example in enumerate(examples):
            where = f"{self.data_param}[{index}]"
            if not isinstance(example, dict):
                raise InvalidRequest("An example must be an object with `messages`.", param=where)
            check_messages(example.get("messages"), f"{where}.messages")

    def prepare(self, context: TrainingContext) -> None:
        from gateway_trainers.common.base import load_base

        load_base(context)

    def run(self, job: Job, context: TrainingContext) -> Path:
        from gateway_trainers.common.base import load_base
        from gateway_trainers.common.batch import collate, masked_loss_and_lead, trainable
        from gateway_trainers.common.chat import encode_chat
        from gateway_trainers.common.loop import Loop, seed_everything
        from gateway_trainers.common.lora import attach_lora, detach, save_adapter

        config = {**DEFAULTS, **job.config}
        base = load_base(context)
        rows = [encode_chat(base.tokenizer, example["messages"]) for example in job.data]
        rows = [row for row in rows if trainable(row[1])]
        if not rows:
            raise ValueError("No example has an assistant token to learn from.")
        seed = seed_everything(config, context)
        order = random.Random(seed)
        epochs = int(config["epochs"])
        total = epochs * len(rows)
        context.log(
            f"{len(rows)} examples x {epochs} epochs = {total} steps, lr {config['learning_rate']}"
        )
        model = attach_lora(base, config, context)
        try:
            loop = Loop(model, context, config, output_name=job.output_name, total_steps=total)
            batches = [collate([row], base.tokenizer.pad_token_id, base.device) for row in rows]
            for epoch in range(epochs):
                indices = list(range(len(batches)))
                if epoch:  # the first epoch in the given order
                    order.shuffle(indices)
                fitting = 0
                for done, index in enumerate(indices, start=1):
                    loss, lead = masked_loss_and_lead(model, batches[index])
                    if loop.fits(loss, lead):
                        fitting += 1
                        continue
                    loop.step(loss, epoch + done / len(batches), lead)
                if fitting == len(batches):
                    loop.stopped_early(float(loss.detach()))
                    break
            return save_adapter(model, context, job.output_name)
        finally:
            detach(model)
