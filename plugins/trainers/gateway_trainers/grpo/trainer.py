"""The `grpo` trainer: a LoRA trained on scored completions (Kiln's `POST /v1/train/grpo`).

A job is given groups of completions of one prompt, each with a reward; nothing is generated.
Before the first step it computes, under no gradient, the per-token log-probabilities of every
completion under the base model (the adapter disabled: the KL reference) and under the policy
at the start of the job (the fresh LoRA, whose B is zero, equals the base; a continued
`base_adapter` does not). Then each group is one optimizer step of the loss in `loss.py`;
`epochs` passes over the groups, the ratio against the job-start policy clipping how far
later passes move.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.jobs import Job
from gateway.training.trainer import Trainer, TrainingContext
from gateway_trainers.grpo.check import GrpoConfig, parse_groups

if TYPE_CHECKING:
    import torch

    from gateway_trainers.grpo.batch import GroupBatch


class GrpoTrainer(Trainer):
    name = "grpo"

    def check(self, data: Any, config: dict[str, Any]) -> None:
        parse_groups(data)
        GrpoConfig.parse(config)

    def prepare(self, context: TrainingContext) -> None:
        from gateway_trainers.common.base import load_base

        load_base(context)

    def run(self, job: Job, context: TrainingContext) -> Path:

        from gateway_trainers.common.base import load_base
        from gateway_trainers.common.loop import Loop, seed_everything
        from gateway_trainers.common.lora import attach_lora, detach, save_adapter
        from gateway_trainers.grpo.batch import completion_logps, encode_group
        from gateway_trainers.grpo.loss import grpo_loss

        groups = parse_groups(job.data)
        config = GrpoConfig.parse(job.config)
        settings = {**asdict(config)}
        base = load_base(context)
        batches = [encode_group(base.tokenizer, group, base.device) for group in groups]
        useful = sum(1 for batch in batches if bool(batch.advantages.abs().sum() > 0))
        context.log(
            f"{len(groups)} groups, {sum(b.advantages.numel() for b in batches)} completions, "
            f"{useful} with rewards that differ"
        )
        seed_everything(settings, context)
        model = attach_lora(base, settings, context)
        try:
            started = time.perf_counter()
            ref, old = _reference_logps(model, batches, continued=config.base_adapter is not None)
            context.log(f"reference log-probs in {time.perf_counter() - started:.2f}s")
            total = config.epochs * len(batches)
            loop = Loop(model, context, settings, output_name=job.output_name, total_steps=total)
            for epoch in range(config.epochs):
                for index, batch in enumerate(batches):
                    logps = completion_logps(model, batch)
                    result = grpo_loss(
                        logps,
                        old[index],
                        ref[index],
                        batch.advantages,
                        batch.completion_mask,
                        clip_epsilon=config.clip_epsilon,
                        kl_coeff=config.kl_coeff,
                    )
                    loop.step(result.loss, epoch + (index + 1) / len(batches))
            context.log(f"last step: kl {result.kl:.5f}, clipped {result.clipped:.1%}")
            return save_adapter(model, context, job.output_name)
        finally:
            detach(model)


def _reference_logps(
    model: Any, batches: list[GroupBatch], *, continued: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per group, the completions' log-probabilities under the base model (adapter off)
    and under the policy as the job starts (the same tensors for a fresh LoRA)."""
    import torch

    from gateway_trainers.grpo.batch import completion_logps

    model.eval()
    with torch.no_grad():
        with model.disable_adapter():
            ref = [completion_logps(model, batch) for batch in batches]
        old = [completion_logps(model, batch) for batch in batches] if continued else ref
    return ref, old
