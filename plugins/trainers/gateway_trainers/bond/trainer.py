"""The `bond` trainer: distil a teacher's best-of-N into a LoRA on the student (J-BOND).

Each of `training_steps` AdamW steps takes `batch_size` items, cycling through them in a
seeded shuffled order, and minimises `(1 - beta) * FW + beta * BW + gamma * REG` (see
`loss.py`):

- `FW`, the `sft` loss of the teacher's `best` response after the item's chat;
- `BW` (when `bond_beta` > 0), for each item one response `y` sampled from the student as
  it is (`max_new_tokens`, `sample_temperature`), scored by the job's judge
  (`context.reward(messages, [y])`), whose score against the teacher's candidates' scores
  gives J-BOND's reward; then a policy gradient on `y` with that reward minus
  `log pi(y) - log pi_anchor(y)`;
- `REG` (when `bond_gamma` > 0), the exact KL from the student to the anchor on `y`'s
  tokens, or on `best`'s tokens when `bond_beta` is 0 (there is no `y` then).

With `bond_beta` 0 the job is plain SFT on the best-of-N (plus `REG` when `bond_gamma` >
0): nothing is sampled and the judge is never called (a job without one runs). With
`bond_beta` > 0 a job whose context has no `reward` fails before its first step.

The anchor is an exponential moving average of the LoRA weights (`anchor_ema`), starting
equal to them (`policy.EmaAnchor`); at the first step the policy is the anchor, so `REG` and
the log-ratio in the return are 0.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from gateway.jobs import Job
from gateway.training.trainer import Trainer, TrainingContext
from gateway_trainers.bond.check import BondConfig, BondItem, parse_items

if TYPE_CHECKING:
    import torch

    from gateway_trainers.bond.policy import EmaAnchor
    from gateway_trainers.common.base import BaseModel

LOG_EVERY = 10
"""A line with the loss terms every this many steps (and after the first and the last),
the means over the steps since the line before."""

Reward = Callable[[list[dict[str, Any]], list[str]], list[float]]


@dataclass(frozen=True)
class _Encoded:
    """An item as tokens: the chat prompt (with the generation prompt) and `best` after it
    (its end-of-turn token included), as `encode_completion` writes them."""

    item: BondItem
    prompt: list[int]
    best: list[int]


@dataclass
class _Terms:
    """The loss terms of the steps since the last log line."""

    forward: list[float] = field(default_factory=list)
    backward: list[float] = field(default_factory=list)
    regulariser: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    penalised: list[bool] = field(default_factory=list)

    def line(self, step: int, total: int) -> str:
        def mean(values: Sequence[float], digits: int = 4) -> str:
            return f"{sum(values) / len(values):.{digits}f}" if values else "-"

        return (
            f"bond step {step}/{total}: loss_forward_kl {mean(self.forward)} "
            f"loss_backward_kl {mean(self.backward)} loss_kl_reg {mean(self.regulariser)} "
            f"reward_policy_mean {mean(self.rewards)} "
            f"jbond_penalties {mean([float(p) for p in self.penalised], 2)}"
        )


class BondTrainer(Trainer):
    """BOND / J-BOND distillation of a teacher's best-of-N samples into the student."""

    name: ClassVar[str] = "bond"

    def check(self, data: Any, config: dict[str, Any]) -> None:
        parse_items(data)
        BondConfig.parse(config)

    def prepare(self, context: TrainingContext) -> None:
        from gateway_trainers.common.base import load_base

        load_base(context)

    def run(self, job: Job, context: TrainingContext) -> Path:
        from gateway_trainers.bond.policy import EmaAnchor
        from gateway_trainers.common.base import load_base
        from gateway_trainers.common.chat import encode_completion
        from gateway_trainers.common.loop import Loop, seed_everything
        from gateway_trainers.common.lora import attach_lora, detach, save_adapter

        items = parse_items(job.data)
        config = BondConfig.parse(job.config)
        if config.bond_beta > 0 and context.reward is None:
            raise ValueError(
                f"This bond job has no judge to score the student's samples: bond_beta "
                f"{config.bond_beta:g} > 0 needs the job's reward (or set bond_beta to 0 for "
                "plain SFT on the best-of-N)."
            )
        settings = config.settings()
        base = load_base(context)
        encoded = []
        for item in items:
            ids, start = encode_completion(base.tokenizer, item.messages, item.best)
            encoded.append(_Encoded(item, ids[:start], ids[start:]))
        seed = seed_everything(settings, context)
        order = list(range(len(encoded)))
        random.Random(seed).shuffle(order)
        total = config.training_steps
        context.log(
            f"{len(items)} items, {total} steps of {config.batch_size} prompts, "
            f"bond_beta {config.bond_beta:g}, bond_gamma {config.bond_gamma:g}, "
            f"anchor_ema {config.anchor_ema:g}, lr {config.learning_rate:g}"
        )
        model = attach_lora(base, settings, context)
        try:
            loop = Loop(
                model,
                context,
                settings,
                output_name=job.output_name,
                total_steps=total,
                log_every=LOG_EVERY,
            )
            anchor = None
            if config.bond_beta > 0 or config.bond_gamma > 0:
                anchor = EmaAnchor(loop.parameters, config.anchor_ema)
            terms = _Terms()
            for step in range(1, total + 1):
                first = (step - 1) * config.batch_size
                batch = [encoded[order[(first + k) % len(order)]] for k in range(config.batch_size)]
                loss = _step(model, base, batch, config, anchor, context.reward, terms)
                loss.backward()
                loop.update(float(loss.detach()), (first + config.batch_size) / len(order))
                if anchor is not None:
                    anchor.update()
                if step == 1 or step % LOG_EVERY == 0 or step == total:
                    context.log(terms.line(step, total))
                    terms = _Terms()
            return save_adapter(model, context, job.output_name)
        finally:
            detach(model)


def _step(
    model: Any,
    base: BaseModel,
    batch: list[_Encoded],
    config: BondConfig,
    anchor: EmaAnchor | None,
    reward: Reward | None,
    terms: _Terms,
) -> torch.Tensor:
    """One step's loss (to back-propagate), its terms added to `terms`."""
    import torch

    from gateway_trainers.bond.loss import (
        backward_kl_loss,
        batch_baseline,
        forward_kl_loss,
        jbond_reward,
        kl_regulariser,
        mix,
        policy_returns,
        sequence_log_probs,
    )
    from gateway_trainers.bond.policy import completion_batch, log_probs, sample
    from gateway_trainers.common.chat import end_of_turn_ids

    pad = base.tokenizer.pad_token_id
    prompts = [encoded.prompt for encoded in batch]
    best_rows = completion_batch(prompts, [e.best for e in batch], pad, base.device)
    backward = regulariser = best_anchored = None
    if config.bond_beta > 0:
        assert reward is not None and anchor is not None
        ends = end_of_turn_ids(base.tokenizer)
        samples = [
            sample(
                model,
                prompt,
                max_new_tokens=config.max_new_tokens,
                temperature=config.sample_temperature,
                ends=ends,
                device=base.device,
            )
            for prompt in prompts
        ]
        scores = [
            _judge(reward, e.item.messages, base.tokenizer.decode(y, skip_special_tokens=True))
            for e, y in zip(batch, samples, strict=True)
        ]
        rewards = [
            jbond_reward(score, e.item.scores) for e, score in zip(batch, scores, strict=True)
        ]
        sample_rows = completion_batch(prompts, samples, pad, base.device)
        with anchor.swapped_in():
            anchored = log_probs(model, sample_rows)
        policy = log_probs(model, sample_rows)
        returns = policy_returns(
            torch.tensor(rewards, device=base.device),
            sequence_log_probs(policy.tokens, policy.mask).detach(),
            sequence_log_probs(anchored.tokens, anchored.mask),
        )
        backward = backward_kl_loss(policy.tokens, policy.mask, returns, batch_baseline(returns))
        if config.bond_gamma > 0:
            regulariser = kl_regulariser(policy.distributions, anchored.distributions, policy.mask)
        terms.rewards += scores
        terms.penalised += [r < 0 for r in rewards]
    elif config.bond_gamma > 0:  # no sample: the regulariser on `best`'s tokens
        assert anchor is not None
        with anchor.swapped_in():
            best_anchored = log_probs(model, best_rows)
    best = log_probs(model, best_rows)
    forward = forward_kl_loss(best.tokens, best.mask)
    if best_anchored is not None:
        regulariser = kl_regulariser(best.distributions, best_anchored.distributions, best.mask)
    result = mix(forward, backward, regulariser, beta=config.bond_beta, gamma=config.bond_gamma)
    terms.forward.append(result.forward)
    if result.backward is not None:
        terms.backward.append(result.backward)
    if result.regulariser is not None:
        terms.regulariser.append(result.regulariser)
    return result.loss


def _judge(reward: Reward, messages: list[dict[str, str]], response: str) -> float:
    """The judge's score of one response; ValueError when it does not give one number."""
    scores = reward([dict(m) for m in messages], [response])
    try:
        values = list(scores)
    except TypeError:
        values = []
    if len(values) != 1:
        raise ValueError(
            f"The job's reward returned {scores!r} for one response: it must return a list "
            "of one score per response."
        )
    score = values[0]
    if not (isinstance(score, numbers.Real) and math.isfinite(score)):
        raise ValueError(f"The job's reward scored a response {score!r}: not a finite number.")
    return float(score)
