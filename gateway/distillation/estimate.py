"""What a distillation job will cost at most, before it spends anything.

Every priced call a job makes is counted, with its token counts bounded from above:
prompt tokens estimated from characters (4 a token, plus 4 a message: the teacher's own
tokenizer is not at hand), every answer as long as it may be. The calls:

- data generation: `n_samples` teacher samples per training prompt, and one reference
  answer of the teacher for each held-out prompt;
- curation: one judge call per sample;
- training: one judge call per policy sample of the BOND backward term (`training_steps` x
  `batch_size`, none when `bond_beta` is 0);
- evaluation: two judge calls per held-out prompt (the student before and after).

A model without a price (a local one) counts 0, and the estimate says it is not priced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Messages = list[dict[str, str]]

JUDGE_OVERHEAD_TOKENS = 200
"""The judge's instructions around the prompt and the answer it scores."""
POLICY_SAMPLE_TOKENS = 128
"""The longest student answer the BOND backward term samples (the trainer's default)."""


def prompt_tokens(messages: Messages) -> int:
    return sum(len(m["content"]) // 4 + 4 for m in messages)


def held_out_count(prompts: int, share: float) -> int:
    """Prompts kept out of training: `share` of them, at least one when there are two or
    more (and `share` > 0), never all."""
    if prompts < 2 or share <= 0:
        return 0
    return min(max(1, round(prompts * share)), prompts - 1)


@dataclass(frozen=True)
class Prices:
    teacher: tuple[float, float] | None
    judge: tuple[float, float] | None


@dataclass(frozen=True)
class CostEstimate:
    cost: float
    breakdown: dict[str, float]
    tokens: dict[str, int]
    priced: bool


def estimate(
    prompts: Sequence[Messages],
    *,
    n_samples: int,
    max_tokens: int,
    judge_max_tokens: int,
    training_steps: int,
    batch_size: int,
    bond_beta: float,
    held_out: float,
    prices: Prices,
    uses_judge: bool = True,
) -> CostEstimate:
    held = held_out_count(len(prompts), held_out)
    train, evaluate = prompts[: len(prompts) - held], prompts[len(prompts) - held :]
    mean_prompt = sum(map(prompt_tokens, prompts)) // max(len(prompts), 1)
    judge_in = JUDGE_OVERHEAD_TOKENS + mean_prompt
    policy_calls = training_steps * batch_size if bond_beta > 0 else 0
    calls = {
        "data_generation": (
            sum(prompt_tokens(p) for p in train) * n_samples
            + sum(prompt_tokens(p) for p in evaluate),
            (len(train) * n_samples + len(evaluate)) * max_tokens,
            "teacher",
        ),
        "curation": (
            len(train) * n_samples * (judge_in + max_tokens),
            len(train) * n_samples * judge_max_tokens,
            "judge",
        ),
        "training": (
            policy_calls * (judge_in + POLICY_SAMPLE_TOKENS),
            policy_calls * judge_max_tokens,
            "judge",
        ),
        "evaluation": (
            2 * len(evaluate) * (judge_in + max_tokens),
            2 * len(evaluate) * judge_max_tokens,
            "judge",
        ),
    }
    breakdown: dict[str, float] = {}
    tokens = {"input": 0, "output": 0}
    priced = True
    for phase, (inputs, outputs, who) in calls.items():
        if who == "judge" and not uses_judge:
            breakdown[phase] = 0.0
            continue
        price = prices.teacher if who == "teacher" else prices.judge
        tokens["input"] += inputs
        tokens["output"] += outputs
        if price is None:
            priced = priced and inputs + outputs == 0
            breakdown[phase] = 0.0
        else:
            breakdown[phase] = round(inputs * price[0] + outputs * price[1], 6)
    return CostEstimate(
        cost=round(sum(breakdown.values()), 6), breakdown=breakdown, tokens=tokens, priced=priced
    )
