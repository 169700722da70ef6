"""What a training example must be, checked at submission so that a bad one is a 400
naming it, not a job that fails later (Kiln queues an empty list and fails it in the worker).

The checks turn the request's Structs into the job data the trainers read: SFT
`[{"messages": [{"role", "content"}]}]`, GRPO `[{"messages", "completions": [{"text",
"reward"}]}]`.
"""

from __future__ import annotations

import math
from typing import Any

from gateway_schemas.training import GrpoGroup, SftExample, TrainingMessage

from gateway.errors import InvalidRequest

ROLES = ("system", "user", "assistant")
INVALID = "training_invalid_request"


def invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=INVALID)


def check_messages(
    messages: list[TrainingMessage], where: str, *, assistant: bool
) -> list[dict[str, str]]:
    """The messages at `where` as job data: not empty, known roles, and (with
    `assistant`) at least one assistant turn with text to learn from."""
    if not messages:
        raise invalid(f"`{where}` is empty: give at least one message.", where)
    for index, message in enumerate(messages):
        if message.role not in ROLES:
            raise invalid(
                f"`{where}[{index}].role` is `{message.role}`; a training message's role is "
                f"one of {', '.join(f'`{r}`' for r in ROLES)}.",
                f"{where}[{index}].role",
            )
    if assistant and not any(m.role == "assistant" and m.content.strip() for m in messages):
        raise invalid(
            f"`{where}` has no assistant turn with text: an example teaches the model "
            "what its assistant turns say.",
            where,
        )
    return [{"role": m.role, "content": m.content} for m in messages]


def sft_data(examples: list[SftExample], where: str = "examples") -> list[dict[str, Any]]:
    """SFT job data; 400 for an empty list or a malformed example."""
    if not examples:
        raise invalid(f"`{where}` is empty: give at least one example to train on.", where)
    return [
        {"messages": check_messages(e.messages, f"{where}[{i}].messages", assistant=True)}
        for i, e in enumerate(examples)
    ]


def grpo_data(groups: list[GrpoGroup]) -> list[dict[str, Any]]:
    """GRPO job data; 400 for an empty list or a malformed group."""
    if not groups:
        raise invalid("`groups` is empty: give at least one group of scored completions.", "groups")
    data = []
    for i, group in enumerate(groups):
        where = f"groups[{i}]"
        prompt = check_messages(group.messages, f"{where}.messages", assistant=False)
        if not group.completions:
            raise invalid(
                f"`{where}.completions` is empty: a group needs completions with rewards.",
                f"{where}.completions",
            )
        completions = []
        for j, completion in enumerate(group.completions):
            place = f"{where}.completions[{j}]"
            if not completion.text.strip():
                raise invalid(f"`{place}.text` is empty.", f"{place}.text")
            if not math.isfinite(completion.reward):
                raise invalid(f"`{place}.reward` must be a finite number.", f"{place}.reward")
            completions.append({"text": completion.text, "reward": completion.reward})
        data.append({"messages": prompt, "completions": completions})
    return data


def completions_count(data: list[dict[str, Any]]) -> int:
    return sum(len(group["completions"]) for group in data)
