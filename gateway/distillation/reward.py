"""Reward plugins: score a distillation job's candidates instead of an LLM judge.

A reward is registered through the `register_rewards` hook and named by a job's
`config.reward`. It runs in the training worker that runs the job (never in the server),
so it may load a model of its own in `score`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import pluggy

from gateway.errors import ConfigError

Messages = list[dict[str, str]]


class Reward(ABC):
    """Scores answers to one prompt."""

    name: ClassVar[str]

    @abstractmethod
    def score(self, messages: Messages, responses: list[str]) -> list[float]:
        """One score per response to the conversation `messages` (it ends with the user
        turn being answered), in 0..1, higher is better."""


def collect_rewards(pm: pluggy.PluginManager) -> dict[str, Reward]:
    """Every registered reward by name; a name registered twice is a ConfigError."""
    rewards: dict[str, Reward] = {}
    owners: dict[str, str] = {}
    for impl in reversed(pm.hook.register_rewards.get_hookimpls()):

        def register(reward: Reward, _owner: str = impl.plugin_name) -> None:
            if reward.name in rewards:
                raise ConfigError(
                    f"reward `{reward.name}` is registered by both `{owners[reward.name]}` "
                    f"and `{_owner}`"
                )
            rewards[reward.name], owners[reward.name] = reward, _owner

        impl.function(register=register)
    return rewards
