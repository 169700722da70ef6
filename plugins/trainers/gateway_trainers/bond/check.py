"""What a `bond` job is given, checked at submission (in the server: no torch here).

Data: a list of items `{"messages": [...], "best": str, "candidates": [{"response", "score"}]}`:
the chat up to the answer (ending with the user's turn), the best of a teacher's N samples,
and the N samples with the judge's scores (`best` is one of them). Config: the keys of
`DEFAULTS`, plus `checkpoint_interval` and `warmup_steps` as every trainer reads them.

Errors are `InvalidRequest` whose `param` names the field, e.g. `data[2].candidates[0].score`
or `config.bond_beta`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeGuard

from gateway.errors import InvalidRequest
from gateway_trainers.common.checks import check_list, check_messages, check_training_config

DATA = "data"
"""The request field the items come from, used in error params."""

DEFAULTS: dict[str, Any] = {
    "bond_beta": 0.5,
    "bond_gamma": 0.1,
    "training_steps": 100,
    "learning_rate": 2e-4,
    "lora_rank": 16,
    "lora_alpha": 16.0,
    "anchor_ema": 0.02,
    "batch_size": 1,
    "max_new_tokens": 128,
    "sample_temperature": 1.0,
    "seed": None,
    "base_adapter": None,
}
"""The settings of a job whose config lacks them (a null value also takes the default)."""

MAX_TRAINING_STEPS = 10_000


@dataclass(frozen=True)
class Candidate:
    """One of the teacher's samples with the judge's score."""

    response: str
    score: float


@dataclass(frozen=True)
class BondItem:
    """One prompt: its chat up to the answer, the teacher's best-of-N, and the N samples."""

    messages: list[dict[str, str]]
    best: str
    candidates: list[Candidate]

    @property
    def scores(self) -> list[float]:
        return [candidate.score for candidate in self.candidates]


@dataclass(frozen=True)
class BondConfig:
    """A `bond` job's settings (see the package README for their meaning)."""

    bond_beta: float
    bond_gamma: float
    training_steps: int
    learning_rate: float
    lora_rank: int
    lora_alpha: float
    anchor_ema: float
    batch_size: int
    max_new_tokens: int
    sample_temperature: float
    seed: int | None
    base_adapter: str | None
    checkpoint_interval: int | None = None
    warmup_steps: int = 0

    @classmethod
    def parse(cls, config: Any) -> BondConfig:
        """The settings in a job's `config`, defaults filled in; `InvalidRequest` naming the
        first bad key (`config.bond_beta`). Other keys are ignored."""
        check_training_config(config)
        values = {
            key: config[key] if config.get(key) is not None else default
            for key, default in DEFAULTS.items()
        }
        for key in ("bond_beta", "bond_gamma"):
            if not (_number(values[key]) and 0 <= values[key] <= 1):
                raise _bad(key, "a number from 0 to 1", values[key])
        steps = values["training_steps"]
        if not (_whole(steps) and 1 <= steps <= MAX_TRAINING_STEPS):
            raise _bad("training_steps", f"a whole number from 1 to {MAX_TRAINING_STEPS}", steps)
        ema = values["anchor_ema"]
        if not (_number(ema) and 0 < ema <= 1):
            raise _bad("anchor_ema", "a number greater than 0 and at most 1", ema)
        for key in ("batch_size", "max_new_tokens"):
            if not (_whole(values[key]) and values[key] >= 1):
                raise _bad(key, "a positive whole number", values[key])
        temperature = values["sample_temperature"]
        if not (_number(temperature) and math.isfinite(temperature) and temperature > 0):
            raise _bad("sample_temperature", "a number greater than 0", temperature)
        interval = config.get("checkpoint_interval")
        return cls(
            bond_beta=float(values["bond_beta"]),
            bond_gamma=float(values["bond_gamma"]),
            training_steps=int(steps),
            learning_rate=float(values["learning_rate"]),
            lora_rank=int(values["lora_rank"]),
            lora_alpha=float(values["lora_alpha"]),
            anchor_ema=float(ema),
            batch_size=int(values["batch_size"]),
            max_new_tokens=int(values["max_new_tokens"]),
            sample_temperature=float(temperature),
            seed=None if values["seed"] is None else int(values["seed"]),
            base_adapter=values["base_adapter"],
            checkpoint_interval=None if interval is None else int(interval),
            warmup_steps=int(config.get("warmup_steps") or 0),
        )

    def settings(self) -> dict[str, Any]:
        """The settings as the shared LoRA and loop helpers read them."""
        return asdict(self)


def parse_items(data: Any) -> list[BondItem]:
    """The items of a job's data; `InvalidRequest` naming the first bad field."""
    items = check_list(data, DATA, "{messages, best, candidates} objects")
    return [_item(item, f"{DATA}[{index}]") for index, item in enumerate(items)]


def _item(item: Any, where: str) -> BondItem:
    if not isinstance(item, Mapping):
        raise InvalidRequest(
            "An item must be an object with `messages`, `best` and `candidates`.", param=where
        )
    messages: Any = item.get("messages")
    check_messages(messages, f"{where}.messages", needs_assistant=False)
    if messages[-1]["role"] != "user":
        raise InvalidRequest(
            "`messages` is the chat up to the answer: it must end with a user message.",
            param=f"{where}.messages[{len(messages) - 1}].role",
        )
    best = item.get("best")
    if not isinstance(best, str) or not best:
        raise InvalidRequest(
            "`best` must be a non-empty string (the teacher's best response).",
            param=f"{where}.best",
        )
    candidates = check_list(
        item.get("candidates"), f"{where}.candidates", "{response, score} objects"
    )
    return BondItem(
        messages=[{"role": m["role"], "content": m["content"]} for m in messages],
        best=best,
        candidates=[_candidate(c, f"{where}.candidates[{i}]") for i, c in enumerate(candidates)],
    )


def _candidate(candidate: Any, where: str) -> Candidate:
    if not isinstance(candidate, Mapping):
        raise InvalidRequest(
            "A candidate must be an object with `response` and `score`.", param=where
        )
    response = candidate.get("response")
    if not isinstance(response, str):
        raise InvalidRequest("`response` must be a string.", param=f"{where}.response")
    score = candidate.get("score")
    if not (_number(score) and math.isfinite(score)):
        raise InvalidRequest(
            f"`score` must be a finite number, not {score!r}.", param=f"{where}.score"
        )
    return Candidate(response=response, score=float(score))


def _bad(key: str, what: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"`{key}` must be {what}, not {value!r}.", param=f"config.{key}")


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: Any) -> TypeGuard[int | float]:
    return _number(value) and math.isfinite(value) and float(value).is_integer()
