"""The optimizer loop every trainer shares: AdamW on the LoRA weights, a constant
learning rate (after an optional linear warm-up), gradient clipping, per-step reports
through `context.step` and periodic checkpoints.

Measured on SmolLM2-135M with one correction example (see the package README): AdamW at
a constant rate converges in the fewest steps; warm-up only delays it.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any

from gateway.training.trainer import TrainingContext

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
"""Gradients are clipped to this global norm (one odd example cannot wreck the LoRA)."""

LEARNED_LEAD = 1.0
"""With `stop_when_learned`, a row counts as learned once every trained token leads the
best other token by this many nats (the trainer's float32 greedy choice alone is not
enough: measured on SmolLM2's one-example correction, it stopped with leads of 0.03 to 0.5
nats and the int8 engine serving the adapter kept the old answer about one time in three)."""

POLISH_RATE = 0.25
"""A row that greedy decoding already reproduces, but by less than `LEARNED_LEAD`, is
trained at this fraction of the learning rate: one full step there took the lead from 0.1
to 4 nats and leaked the fact into a neighbouring question ("The capital of France is
Quillport."); smaller steps stop just past the lead."""


def seed_everything(config: dict[str, Any], context: TrainingContext | None = None) -> int:
    """Seed Python's and torch's generators with `config["seed"]` (a random seed when it
    is missing, logged so that a run can be repeated). Returns the seed used."""
    import torch

    seed = config.get("seed")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    seed = int(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    if context is not None:
        context.log(f"seed {seed}")
    return seed


class Loop:
    """Optimizer steps over the trainable parameters of `model`, each reported through
    `context.step` (which raises JobStopped when the job is stopped: it propagates).

    Call `step(loss, epoch)` with a loss still to back-propagate, or do the backward
    passes yourself (gradient accumulation) and call `update(loss_value, epoch)`.

    Early stop: with `config["stop_loss"]` and/or `config["stop_when_learned"]`, a
    trainer asks `fits(loss, lead)` before each step and skips the step when the row
    already fits (its loss is at most `stop_loss`; every trained token is the model's
    greedy choice by `LEARNED_LEAD`), ending the job once a whole epoch was skipped, and
    passes the lead to `step`, which takes smaller steps once greedy decoding reproduces
    the row. On a one-example correction, the steps after the fact is learned are what
    leak it into neighbouring questions (see the package README).
    """

    def __init__(
        self,
        model: Any,
        context: TrainingContext,
        config: dict[str, Any],
        *,
        output_name: str,
        total_steps: int,
        log_every: int = 1,
    ):
        import torch

        context.phase("training")
        self.model = model
        self.context = context
        self.output_name = output_name
        self.total = max(int(total_steps), 1)
        self.learning_rate = float(config["learning_rate"])
        self.warmup = max(int(config.get("warmup_steps") or 0), 0)
        interval = config.get("checkpoint_interval")
        self.checkpoint_interval = int(interval) if interval else 0
        stop = config.get("stop_loss")
        self.stop_loss = float(stop) if stop is not None else None
        self.until_learned = bool(config.get("stop_when_learned"))
        self.max_grad_norm = float(config.get("max_grad_norm") or MAX_GRAD_NORM)
        self.log_every = max(log_every, 1)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("The model has no trainable parameters.")
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=self.rate(1), betas=(0.9, 0.999), weight_decay=0.0
        )
        self.done = 0
        self.last_loss: float | None = None
        self._clock = time.perf_counter()

    def rate(self, step: int) -> float:
        """The learning rate of 1-based step `step`."""
        if self.warmup and step <= self.warmup:
            return self.learning_rate * step / (self.warmup + 1)
        return self.learning_rate

    def fits(self, loss: torch.Tensor, lead: float = float("-inf")) -> bool:
        """Whether a row needs no step: every early-stop criterion that is set holds
        (never when none is set). `lead` is the row's `masked_loss_and_lead`."""
        if self.stop_loss is None and not self.until_learned:
            return False
        if self.stop_loss is not None and float(loss.detach()) > self.stop_loss:
            return False
        return lead >= LEARNED_LEAD or not self.until_learned

    def step(self, loss: torch.Tensor, epoch: float, lead: float = float("-inf")) -> float:
        """Back-propagate `loss`, then `update` (at `POLISH_RATE` of the rate when the row
        is greedy-reproduced already and `stop_when_learned` is set). Returns the loss."""
        loss.backward()
        polish = self.until_learned and 0 <= lead < LEARNED_LEAD
        return self.update(float(loss.detach()), epoch, POLISH_RATE if polish else 1.0)

    def update(self, loss: float, epoch: float, scale: float = 1.0) -> float:
        """Apply the gradients gathered so far as one optimizer step (at `scale` times
        the learning rate) and report it."""
        import torch

        step = self.done + 1
        rate = self.rate(step) * scale
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.done = step
        self.last_loss = loss
        now = time.perf_counter()
        if step % self.log_every == 0 or step == self.total:
            self.context.log(
                f"step {step}/{self.total} loss {loss:.4f} lr {rate:.3g} epoch {epoch:.2f} "
                f"({now - self._clock:.2f}s)"
            )
        self._clock = now
        self.context.step(step, self.total, loss, rate, epoch)
        if self.checkpoint_interval and step % self.checkpoint_interval == 0:
            self.checkpoint(step)
        return loss

    def stopped_early(self, loss: float) -> None:
        """Log that every row fits (the trainer then ends the job)."""
        criteria = [f"loss {loss:.4f} <= stop_loss {self.stop_loss:g}"] if self.stop_loss else []
        if self.until_learned:
            criteria.append(f"every trained token is the greedy choice by {LEARNED_LEAD:g} nats")
        self.context.log(
            f"{' and '.join(criteria)} on every example: stopped after step {self.done} "
            f"of {self.total}"
        )

    def checkpoint(self, step: int) -> None:
        """Install the LoRA as it is now as `<output_name>-checkpoint-<step>`."""
        from gateway_trainers.common.lora import save_adapter

        name = f"{self.output_name}-checkpoint-{step}"
        save_adapter(self.model, self.context, name)
        self.context.log(f"checkpoint `{name}` written")
