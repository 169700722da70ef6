"""Submission checks shared by the trainers (run in the server: no torch here).

Each raises `gateway.errors.InvalidRequest` whose `param` names the offending field, as
the request spells it (`examples[0].messages[1].role`, `config.learning_rate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway.adapters.names import check_name
from gateway.errors import InvalidRequest

ROLES = frozenset({"system", "user", "assistant"})


def _field(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def positive_int(config: Mapping[str, Any], key: str, prefix: str, *, optional: bool) -> None:
    """`config[key]` is a whole number > 0 (or missing/None when `optional`)."""
    value: Any = config.get(key)
    if value is None and (optional or key not in config):
        return
    if not (_number(value) and float(value).is_integer() and value > 0):
        raise InvalidRequest(
            f"`{key}` must be a positive whole number, not {value!r}.", param=_field(prefix, key)
        )


def positive_number(config: Mapping[str, Any], key: str, prefix: str) -> None:
    """`config[key]`, when given, is a finite number > 0."""
    value: Any = config.get(key)
    if key not in config:
        return
    if not (_number(value) and math.isfinite(value) and value > 0):
        raise InvalidRequest(
            f"`{key}` must be a number greater than 0, not {value!r}.", param=_field(prefix, key)
        )


def check_training_config(config: Mapping[str, Any], prefix: str = "config") -> None:
    """The keys every LoRA trainer reads: `epochs`, `learning_rate`, `lora_rank`,
    `lora_alpha`, `base_adapter`, `checkpoint_interval`, `seed`, `stop_loss`,
    `stop_when_learned`, `warmup_steps`."""
    if not isinstance(config, Mapping):
        raise InvalidRequest("The training config must be an object.", param=prefix or None)
    positive_int(config, "epochs", prefix, optional=False)
    positive_number(config, "learning_rate", prefix)
    positive_int(config, "lora_rank", prefix, optional=False)
    positive_number(config, "lora_alpha", prefix)
    positive_int(config, "checkpoint_interval", prefix, optional=True)
    base = config.get("base_adapter")
    if base is not None:
        check_name(base, _field(prefix, "base_adapter"))
    seed = config.get("seed")
    if seed is not None and not (_number(seed) and float(seed).is_integer() and seed >= 0):
        raise InvalidRequest(
            f"`seed` must be a whole number >= 0, not {seed!r}.", param=_field(prefix, "seed")
        )
    stop = config.get("stop_loss")
    if stop is not None and not (_number(stop) and math.isfinite(stop) and stop >= 0):
        raise InvalidRequest(
            f"`stop_loss` must be a number >= 0, not {stop!r}.", param=_field(prefix, "stop_loss")
        )
    learned = config.get("stop_when_learned")
    if learned is not None and not isinstance(learned, bool):
        raise InvalidRequest(
            f"`stop_when_learned` must be true or false, not {learned!r}.",
            param=_field(prefix, "stop_when_learned"),
        )
    warmup = config.get("warmup_steps")
    if warmup is not None and not (_number(warmup) and float(warmup).is_integer() and warmup >= 0):
        raise InvalidRequest(
            f"`warmup_steps` must be a whole number >= 0, not {warmup!r}.",
            param=_field(prefix, "warmup_steps"),
        )


def check_messages(messages: Any, param: str, *, needs_assistant: bool = True) -> None:
    """A conversation: a non-empty list of `{"role", "content"}` with known roles and
    text content, not opening with the assistant, with an assistant turn to learn from."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty list of messages.", param=param)
    for index, message in enumerate(messages):
        where = f"{param}[{index}]"
        if not isinstance(message, Mapping):
            raise InvalidRequest(
                "A message must be an object with `role` and `content`.", param=where
            )
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"Unknown role {role!r}: use one of {', '.join(sorted(ROLES))}.",
                param=f"{where}.role",
            )
        if not isinstance(message.get("content"), str):
            raise InvalidRequest("`content` must be a string.", param=f"{where}.content")
    if messages[0]["role"] == "assistant":
        raise InvalidRequest(
            "A conversation must open with a system or user message, not the assistant.",
            param=f"{param}[0].role",
        )
    if needs_assistant and not any(m["role"] == "assistant" for m in messages):
        raise InvalidRequest(
            "The conversation has no assistant message to learn from.", param=param
        )


def check_list(data: Any, param: str, what: str) -> list[Any]:
    """`data` as a non-empty list (of `what`)."""
    if not isinstance(data, list) or not data:
        raise InvalidRequest(f"`{param}` must be a non-empty list of {what}.", param=param)
    return data
