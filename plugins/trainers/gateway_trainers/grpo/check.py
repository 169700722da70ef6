"""What a GRPO job is given, checked at submission (in the server: no torch here).

Data: Kiln's `groups`, each `{"messages": [{"role", "content"}...], "completions": [{"text",
"reward"}...]}`. Config: Kiln's keys with Kiln's defaults, plus `epochs` and `seed`.
Errors are `InvalidRequest` whose `param` names the field, e.g.
`groups[2].completions[0].reward`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest

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
        """The settings in a job's `config` (missing or null keys take the defaults);
        `InvalidRequest` naming the key when one is out of range. Other keys are ignored."""
        default = cls()

        def get(key: str) -> Any:
            value = config.get(key)
            return getattr(default, key) if value is None else value

        learning_rate = _number(get("learning_rate"), "learning_rate")
        if not learning_rate > 0:
            raise InvalidRequest("`learning_rate` must be above 0.", param="learning_rate")
        kl_coeff = _number(get("kl_coeff"), "kl_coeff")
        if kl_coeff < 0:
            raise InvalidRequest("`kl_coeff` must be 0 or more.", param="kl_coeff")
        clip_epsilon = _number(get("clip_epsilon"), "clip_epsilon")
        if not 0 < clip_epsilon < 1:
            raise InvalidRequest(
                "`clip_epsilon` must be between 0 and 1 (exclusive).", param="clip_epsilon"
            )
        lora_alpha = _number(get("lora_alpha"), "lora_alpha")
        if not lora_alpha > 0:
            raise InvalidRequest("`lora_alpha` must be above 0.", param="lora_alpha")
        base_adapter = config.get("base_adapter")
        if base_adapter is not None and (not isinstance(base_adapter, str) or not base_adapter):
            raise InvalidRequest(
                "`base_adapter` must be an adapter name or null.", param="base_adapter"
            )
        interval = config.get("checkpoint_interval")
        seed = config.get("seed")
        return cls(
            learning_rate=learning_rate,
            kl_coeff=kl_coeff,
            clip_epsilon=clip_epsilon,
            lora_rank=_integer(get("lora_rank"), "lora_rank", minimum=1),
            lora_alpha=lora_alpha,
            base_adapter=base_adapter,
            epochs=_integer(get("epochs"), "epochs", minimum=1),
            checkpoint_interval=None
            if interval is None
            else _integer(interval, "checkpoint_interval", minimum=1),
            seed=None if seed is None else _integer(seed, "seed", minimum=0),
        )


def parse_groups(data: Any) -> list[Group]:
    """The groups of a job's data; `InvalidRequest` naming the first bad field."""
    if not isinstance(data, list) or not data:
        raise InvalidRequest(
            "`groups` must be a non-empty list of {messages, completions} objects.", param=DATA
        )
    return [_group(item, f"{DATA}[{index}]") for index, item in enumerate(data)]


def _group(item: Any, where: str) -> Group:
    if not isinstance(item, Mapping):
        raise InvalidRequest(
            f"`{where}` must be an object with messages and completions.", param=where
        )
    messages = item.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            f"`{where}.messages` must be a non-empty list of messages (the prompt).",
            param=f"{where}.messages",
        )
    completions = item.get("completions")
    if not isinstance(completions, list) or not completions:
        raise InvalidRequest(
            f"`{where}.completions` must be a non-empty list of {{text, reward}} objects.",
            param=f"{where}.completions",
        )
    return Group(
        messages=[_message(m, f"{where}.messages[{i}]") for i, m in enumerate(messages)],
        completions=[
            _completion(c, f"{where}.completions[{i}]") for i, c in enumerate(completions)
        ],
    )


def _message(message: Any, where: str) -> dict[str, str]:
    if not isinstance(message, Mapping):
        raise InvalidRequest(f"`{where}` must be an object with role and content.", param=where)
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or not role:
        raise InvalidRequest(f"`{where}.role` must be a non-empty string.", param=f"{where}.role")
    if not isinstance(content, str):
        raise InvalidRequest(f"`{where}.content` must be a string.", param=f"{where}.content")
    return {"role": role, "content": content}


def _completion(completion: Any, where: str) -> Completion:
    if not isinstance(completion, Mapping):
        raise InvalidRequest(f"`{where}` must be an object with text and reward.", param=where)
    text = completion.get("text")
    if not isinstance(text, str) or not text:
        raise InvalidRequest(f"`{where}.text` must be a non-empty string.", param=f"{where}.text")
    reward = completion.get("reward")
    if isinstance(reward, bool) or not isinstance(reward, int | float) or not math.isfinite(reward):
        raise InvalidRequest(f"`{where}.reward` must be a finite number.", param=f"{where}.reward")
    return Completion(text=text, reward=float(reward))


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"`{key}` must be a finite number.", param=key)
    return float(value)


def _integer(value: Any, key: str, *, minimum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"`{key}` must be an integer of at least {minimum}.", param=key)
    return value
