"""Retries within a group, fallbacks across groups, cooldowns of deployments.

The router is the only retry loop (the HTTP client never retries by itself). One
generation:

1. takes its model's first group; picks a deployment among those not cooling down and
   not yet tried by this generation: round-robin, or, given a prompt's key (prefix
   affinity), the first in the key's rendezvous order that is not overloaded
   (`gateway_teacher.affinity`), so a retry goes to the next in that order;
2. on a retryable failure tries again (`num_retries` times), at once when another
   deployment of the group is left, else after `Retry-After` or an exponential backoff;
   a failure that ends the group (401, 403, 404) or the last retry moves on to the next
   group (a fallback, at most `max_fallbacks` of them); a refused request (400) ends it all;
3. a deployment that failed with a cooldown status is skipped by every generation for
   `cooldown_seconds` (or the upstream's `Retry-After`, if longer). A group's only
   deployment is never cooled: there is nothing else to pick, and the retry loop
   already waits. When every deployment of a group is cooling, they are tried anyway.

Only the start of a stream is retried: once a chunk has reached the caller, a failure
ends the stream as an error.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TypeVar

from gateway_teacher.affinity import bounded, rendezvous
from gateway_teacher.failures import UpstreamProblem
from gateway_teacher.targets import Group, Target

T = TypeVar("T")
MAX_WAIT = 60.0
"""Seconds a retry waits at most, whatever `Retry-After` says."""


class Cooldowns:
    """Deployments skipped until a moment: a time-to-live entry per deployment id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._until: dict[str, float] = {}

    def cool(self, target: str, seconds: float) -> None:
        if seconds <= 0:
            return
        until = self._clock() + seconds
        self._until[target] = max(self._until.get(target, 0.0), until)

    def cooling(self, target: str) -> bool:
        until = self._until.get(target)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[target]
            return False
        return True

    def remaining(self) -> dict[str, float]:
        """Seconds left for each deployment cooling down now."""
        now = self._clock()
        return {t: round(u - now, 3) for t, u in self._until.items() if u > now}


class Router:
    """Opens one generation's stream on the model's groups of deployments."""

    def __init__(
        self,
        groups: Sequence[Group],
        cooldowns: Cooldowns,
        *,
        num_retries: int,
        cooldown_seconds: float,
        max_fallbacks: int,
        backoff_seconds: float,
        balance: float = 1.25,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.groups = list(groups[: 1 + max_fallbacks])
        self.cooldowns = cooldowns
        self.num_retries = num_retries
        self.cooldown_seconds = cooldown_seconds
        self.backoff_seconds = backoff_seconds
        self.balance = balance
        """Prefix affinity's bound: a deployment's share of the generations in flight."""
        self.load: Counter[str] = Counter()
        """Generations in flight per deployment, counted for the ones opened with a key."""
        self._sleep = sleep
        self._turn = itertools.count()

    @property
    def targets(self) -> list[Target]:
        return [t for g in self.groups for t in g.targets]

    async def open(
        self, call: Callable[[Target], AsyncGenerator[T]], key: str | None = None
    ) -> tuple[Target, AsyncGenerator[T], T]:
        """The first item of `call(target)` for the first deployment that produces one, with
        the deployment and the rest of its stream. `key`: the prompt's prefix, to pick by
        affinity (then the stream counts in `load` until it is closed). Raises the last
        failure's gateway error (`UpstreamProblem.error`) when every retry and fallback
        failed."""
        turn = next(self._turn)
        attempts = 0
        last: UpstreamProblem | None = None
        for group in self.groups:
            tried: set[str] = set()
            for attempt in range(1 + self.num_retries):
                target = self._pick(group, tried, turn, key)
                if attempt and last is not None:
                    await self._pause(group, target, tried, last, attempt)
                attempts += 1
                stream = call(target) if key is None else self._counted(target, call(target))
                try:
                    first = await anext(stream)
                except UpstreamProblem as problem:
                    await stream.aclose()
                    last = problem
                    tried.add(target.id)
                    if problem.cooldown and len(group.targets) > 1:
                        wait = max(self.cooldown_seconds, problem.retry_after or 0.0)
                        self.cooldowns.cool(target.id, wait)
                    if problem.refused:
                        raise problem.error(attempts) from None
                    if not problem.retryable:
                        break
                    continue
                except BaseException:
                    await stream.aclose()
                    raise
                return target, stream, first
        assert last is not None, "a model has at least one deployment"
        raise last.error(attempts)

    def _pick(self, group: Group, tried: set[str], turn: int, key: str | None) -> Target:
        if key is None:
            start = turn % len(group.targets)
            ordered = list(group.targets[start:] + group.targets[:start])
        else:
            ordered = rendezvous(key, group.targets)
        fresh = [t for t in ordered if not self.cooldowns.cooling(t.id)]
        for candidates in (
            [t for t in fresh if t.id not in tried],
            fresh,
            [t for t in ordered if t.id not in tried],
        ):
            if candidates:
                if key is None:
                    return candidates[0]
                return bounded(candidates, self.load, group.targets, self.balance)
        return ordered[0]

    async def _counted(self, target: Target, stream: AsyncGenerator[T]) -> AsyncGenerator[T]:
        """`stream`, counted in `load` from its start until it ends or is closed."""
        self.load[target.id] += 1
        try:
            async for item in stream:
                yield item
        finally:
            self.load[target.id] -= 1
            if not self.load[target.id]:
                del self.load[target.id]
            await stream.aclose()

    async def _pause(
        self, group: Group, target: Target, tried: set[str], last: UpstreamProblem, attempt: int
    ) -> None:
        """No wait when the retry goes to a deployment not tried yet; otherwise what the
        upstream asked for (`Retry-After`), else `backoff_seconds`, doubling."""
        if target.id not in tried:
            return
        wait = last.retry_after
        if wait is None:
            wait = self.backoff_seconds * 2 ** (attempt - 1)
        if wait > 0:
            await self._sleep(min(wait, MAX_WAIT))
