"""What a GRPO job is given, checked at submission (in the server: no torch here).

Data: Kiln's `groups`, each `{"messages": [{"role", "content"}...], "completions": [{"text",
"reward"}...]}`. Config: Kiln's keys with Kiln's defaults, plus `epochs` and `seed`.
Errors are `InvalidRequest` whose `param` names the field as the request spells it, e.g.
`groups[2].completions[0].reward` or `config.kl_coeff` (the shared checks of
`common.checks` for the messages and the keys every LoRA trainer reads).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from gateway.errors import InvalidRequest
from gateway_trainers.common.checks import check_list, check_messages, check_training_config

DATA = "groups"
"""The request field the data comes from (Kiln's name), used in error params."""


@dataclass(frozen=True)
class Completion:
    text: str
    reward: float


@dataclass(frozen=True)
class Group:
    messages: list[dict[str, str]]
    completions: list[Completion]

    @property
    def rewards(self) -> list[float]:
        return [c.reward for c in self.completions]


@dataclass(frozen=True)
class GrpoConfig:
    """A GRPO job's settings (Kiln's defaults)."""

    learning_rate: float = 1e-5
    kl_coeff: float = 0.1
    clip_epsilon: float = 0.2
    lora_rank: int = 16
    lora_alpha: float = 32.0
    base_adapter: str | None = None
    epochs: int = 1
    """Passes over the groups; from the second on, the clipped ratio limits how far the
    policy moves from where the job started."""
    checkpoint_interval: int | None = None
    seed: int | None = None

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> GrpoConfig:
        """The settings in a job's `config` (missing keys, and null optional ones, take the
        defaults); `InvalidRequest` naming the key (`config.kl_coeff`) when one is out of
        range. Other keys are ignored."""
        check_training_config(config)
        kl_coeff = config.get("kl_coeff", 0.0)
        if not (_number(kl_coeff) and math.isfinite(kl_coeff) and kl_coeff >= 0):
            raise InvalidRequest(
                f"`kl_coeff` must be a number >= 0, not {kl_coeff!r}.", param="config.kl_coeff"
            )
        clip = config.get("clip_epsilon", 0.2)
        if not (_number(clip) and 0 < clip < 1):
            raise InvalidRequest(
                f"`clip_epsilon` must be a number between 0 and 1 (exclusive), not {clip!r}.",
                param="config.clip_epsilon",
            )
        default = cls()
        values = {
            key: config[key] if config.get(key) is not None else getattr(default, key)
            for key in default.__dataclass_fields__
        }
        return cls(
            learning_rate=float(values["learning_rate"]),
            kl_coeff=float(values["kl_coeff"]),
            clip_epsilon=float(values["clip_epsilon"]),
            lora_rank=int(values["lora_rank"]),
            lora_alpha=float(values["lora_alpha"]),
            base_adapter=values["base_adapter"],
            epochs=int(values["epochs"]),
            checkpoint_interval=None
            if values["checkpoint_interval"] is None
            else int(values["checkpoint_interval"]),
            seed=None if values["seed"] is None else int(values["seed"]),
        )


def parse_groups(data: Any) -> list[Group]:
    """The groups of a job's data; `InvalidRequest` naming the first bad field."""
    groups = check_list(data, DATA, "{messages, completions} objects")
    return [_group(item, f"{DATA}[{index}]") for index, item in enumerate(groups)]


def _group(item: Any, where: str) -> Group:
    if not isinstance(item, Mapping):
        raise InvalidRequest(
            "A group must be an object with `messages` and `completions`.", param=where
        )
    messages: Any = item.get("messages")
    check_messages(messages, f"{where}.messages", needs_assistant=False)
    completions = check_list(
        item.get("completions"), f"{where}.completions", "{text, reward} objects"
    )
    return Group(
        messages=[{"role": m["role"], "content": m["content"]} for m in messages],
        completions=[
            _completion(c, f"{where}.completions[{i}]") for i, c in enumerate(completions)
        ],
    )


def _completion(completion: Any, where: str) -> Completion:
    if not isinstance(completion, Mapping):
        raise InvalidRequest(
            "A completion must be an object with `text` and `reward`.", param=where
        )
    text = completion.get("text")
    if not isinstance(text, str) or not text:
        raise InvalidRequest(f"`{where}.text` must be a non-empty string.", param=f"{where}.text")
    reward = completion.get("reward")
    if not (_number(reward) and math.isfinite(reward)):
        raise InvalidRequest(
            f"`{where}.reward` must be a finite number, not {reward!r}.", param=f"{where}.reward"
        )
    return Completion(text=text, reward=float(reward))


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
