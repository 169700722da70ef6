"""Where a distillation job's prompts come from, read once at submission.

A prompt is a conversation to answer: a list of `{"role", "content"}` messages ending
with a user turn (a plain string becomes one user message). Sources, in OpenTracy's order of
priority: a dataset file (`dataset_id`, inside the data directory's `datasets/` folder),
inline `prompts`, then the gateway's recorded traffic (`recorded`, or by default when
`[recording]` is on). Duplicates are dropped and at most `num_prompts` are kept.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from gateway_schemas.distillation import DistillationConfig, PromptItem

from gateway.errors import InvalidRequest

Messages = list[dict[str, str]]

DATASETS = "datasets"
MAX_BYTES = 64 * 1024**2
TEXT_KEYS = ("prompt", "text", "content", "input", "question")


def invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_config")


def from_inline(prompts: Sequence[str | PromptItem]) -> list[Messages]:
    out: list[Messages] = []
    for index, item in enumerate(prompts):
        where = f"config.prompts[{index}]"
        if isinstance(item, str):
            out.append(_user(item, where))
        else:
            turns = [{"role": m.role, "content": m.content} for m in item.messages]
            out.append(from_messages(turns, where))
    return out


def from_messages(messages: list[dict[str, str]], where: str) -> Messages:
    """A conversation given as `{"role", "content"}` dicts (a recorded chat), cut after
    its last user turn; `where` names it in an error."""
    return _conversation(messages, where)


def from_dataset(data_dir: Path, name: str) -> list[Messages]:
    """The prompts of `<data_dir>/datasets/<name>`: `.jsonl`, `.json` (an array) or `.csv`;
    each row a `messages` list (answers after the last user turn are dropped) or a text
    under one of `prompt`, `text`, `content`, `input`, `question`."""
    param = "config.dataset_id"
    parts = PurePosixPath(name).parts
    if not name.strip() or "\\" in name or name.startswith("/") or ".." in parts:
        raise invalid(
            f"Refused dataset `{name}`: name a file inside the `{DATASETS}/` folder of the "
            "data directory (no absolute paths, no `..`).",
            param,
        )
    path = data_dir / DATASETS / name
    if not path.is_file():
        raise invalid(f"There is no dataset `{name}` in the `{DATASETS}/` folder.", param)
    if path.stat().st_size > MAX_BYTES:
        raise invalid(f"Dataset `{name}` is larger than {MAX_BYTES // 1024**2} MiB.", param)
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = _rows(text, path.suffix.lower(), name, param)
    return [_row_prompt(row, f"{name} row {index + 1}") for index, row in enumerate(rows)]


def choose(prompts: Iterable[Messages], limit: int) -> list[Messages]:
    """The first `limit` distinct prompts."""
    seen: set[str] = set()
    out: list[Messages] = []
    for prompt in prompts:
        key = json.dumps(prompt, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append(prompt)
        if len(out) == limit:
            break
    return out


def describe_sources(config: DistillationConfig) -> str:
    if config.dataset_id:
        return f"dataset `{config.dataset_id}`"
    if config.prompts:
        return "inline prompts"
    return "recorded traffic"


def _rows(text: str, suffix: str, name: str, param: str) -> list[Any]:
    try:
        if suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if suffix == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise invalid(f"Dataset `{name}` must hold a JSON array of rows.", param)
            return rows
        if suffix == ".csv":
            return list(csv.DictReader(io.StringIO(text)))
    except json.JSONDecodeError as exc:
        raise invalid(f"Dataset `{name}` is not valid JSON: {exc}", param) from None
    raise invalid(f"Dataset `{name}`: use a `.jsonl`, `.json` or `.csv` file.", param)


def _row_prompt(row: Any, where: str) -> Messages:
    if isinstance(row, str):
        return _user(row, where)
    if not isinstance(row, dict):
        raise invalid(f"{where} is not an object with `messages` or `prompt`.", "config.dataset_id")
    messages = row.get("messages")
    if isinstance(messages, list):
        return _conversation(messages, where)
    for key in TEXT_KEYS:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return _user(value, where)
    raise invalid(
        f"{where} has neither `messages` nor a text under {', '.join(TEXT_KEYS)}.",
        "config.dataset_id",
    )


def _user(text: str, where: str) -> Messages:
    if not text.strip():
        raise invalid(
            f"{where} is empty.", where if where.startswith("config") else "config.dataset_id"
        )
    return [{"role": "user", "content": text}]


def _conversation(messages: list[Any], where: str) -> Messages:
    turns: Messages = []
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise invalid(
                f"{where}: message {index} needs a `role` and a text `content`.", "config.prompts"
            )
        turns.append({"role": message["role"], "content": message["content"]})
    last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=-1)
    if last_user < 0:
        raise invalid(f"{where} has no user message to answer.", "config.prompts")
    return turns[: last_user + 1]
