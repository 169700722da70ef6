"""`Scorer`: what scores a distillation job's answers, its reward plugin or else its judge.

The judge is a served model asked for JSON scores (`calls.judge_messages`), every call
priced into the job's cost; at most `concurrency` judge calls are in flight. A judge call
that still fails after the teacher proxy's retries scores the neutral 0.5, as OpenTracy
scores it, and is counted: `check` fails the job when most calls failed. A reward plugin
runs in a thread of the job's event loop. `many` scores several prompts at once and hands
each prompt's scores over as soon as they are in; calling the scorer itself is the
synchronous form the BOND trainer uses from its training step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from gateway.distillation.reward import Reward
from gateway.errors import GatewayError
from gateway_trainers.distill.calls import NEUTRAL, generate, judge_messages, parse_score
from gateway_trainers.distill.runner import LoopThread, all_of

Messages = list[dict[str, str]]


class Scorer:
    def __init__(
        self,
        calls: LoopThread,
        *,
        reward: Reward | None = None,
        judge: Any = None,
        judge_name: str = "",
        max_tokens: int = 256,
        tenant: str | None = None,
        concurrency: int = 4,
        on_cost: Callable[[float], None] = lambda cost: None,
    ):
        if reward is None and judge is None:
            raise ValueError("a scorer needs a reward or a judge")
        self.calls = calls
        self.reward = reward
        self.judge = judge
        self.judge_name = judge_name
        self.max_tokens = max_tokens
        self.tenant = tenant
        self.limit = asyncio.Semaphore(concurrency)
        self.on_cost = on_cost
        self.asked = 0
        self.failed = 0
        self.last_error = ""

    async def score(self, messages: Messages, responses: Sequence[str]) -> list[float]:
        if self.reward is not None:
            scores = await asyncio.to_thread(self.reward.score, messages, list(responses))
            if len(scores) != len(responses):
                raise ValueError(
                    f"The reward `{self.reward.name}` gave {len(scores)} scores for "
                    f"{len(responses)} answers."
                )
            return [float(s) for s in scores]
        return await all_of(self._judge(messages, response) for response in responses)

    async def _judge(self, messages: Messages, response: str) -> float:
        self.asked += 1
        async with self.limit:
            try:
                answer = await generate(
                    self.judge,
                    self.judge_name,
                    judge_messages(messages, response),
                    temperature=0.0,
                    max_tokens=self.max_tokens,
                    tenant=self.tenant,
                )
            except (GatewayError, RuntimeError) as exc:  # failed, after the proxy's retries
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                return NEUTRAL
        self.on_cost(answer.cost)
        return parse_score(answer.text)

    def check(self) -> None:
        """Fail when most judge calls so far failed: the scores would mean nothing."""
        if self.asked and self.failed * 2 > self.asked:
            raise RuntimeError(
                f"The judge `{self.judge_name}` failed {self.failed} of {self.asked} calls "
                f"(the last: {self.last_error})."
            )

    def __call__(self, messages: Messages, responses: list[str]) -> list[float]:
        return self.calls.run(self.score(messages, responses))

    def many(
        self,
        items: Sequence[tuple[Messages, Sequence[str]]],
        each: Callable[[int, list[float]], None],
    ) -> None:
        """Score every item at once; `each(index, scores)` as each item's are in."""

        async def one(index: int, messages: Messages, responses: Sequence[str]) -> None:
            each(index, await self.score(messages, responses))

        async def everything() -> None:
            await all_of(one(i, m, r) for i, (m, r) in enumerate(items))

        self.calls.run(everything())
