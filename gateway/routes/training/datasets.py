"""Fine-tune datasets: a file of the data directory's `datasets/` folder, or one uploaded
with the request, read into the `finetune` trainer's rows at submission.

Formats by extension: `.jsonl` (one JSON object a line), `.json` (an array of objects) and
`.csv` (a header row, then one row a line). A row becomes `{"messages": [...]}` (chat
turns, with an assistant turn), `{"prompt", "completion"}`, or `{"text"}`, taken from the
`text_column`, else `content`, else `input` (NPU-STACK's fallbacks). Any row that is none
of these is a 400 naming it. Only local files are read: a dataset-hub name is refused.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
from gateway_schemas.training import TrainingMessage

from gateway.errors import InvalidRequest
from gateway.routes.training.examples import check_messages

FOLDER = "datasets"
FORMATS = (".jsonl", ".json", ".csv")
MAX_BYTES = 64 * 1024**2
"""The largest dataset read (a file of the folder, or an upload)."""
TEXT_FALLBACKS = ("content", "input")


def invalid(message: str, param: str = "dataset") -> InvalidRequest:
    return InvalidRequest(message, param=param)


def formats() -> str:
    return ", ".join(FORMATS)


def dataset_path(data_dir: Path, name: str) -> Path:
    """The file `name` names inside `<data_dir>/datasets/`; 400 for anything else (a
    path leading out of the folder, a hub name, a missing file, an unknown format)."""
    folder = data_dir / FOLDER
    parts = PurePosixPath(name).parts
    if not name.strip() or "\\" in name or name.startswith("/") or ".." in parts:
        raise invalid(
            f"Refused dataset `{name}`: name a file inside the `{FOLDER}/` folder of the data "
            "directory (no absolute paths, no `..`)."
        )
    path = folder / name
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except OSError:
        inside = False
    if not inside:
        raise invalid(f"Refused dataset `{name}`: it leads out of the `{FOLDER}/` folder.")
    if not path.is_file():
        raise invalid(
            f"Dataset `{name}` is not a file in the `{FOLDER}/` folder of the data directory. "
            f"Only local files there ({formats()}) or a file uploaded with the request "
            "(form field `dataset_file`) are read; dataset-hub names are not downloaded."
        )
    check_format(name)
    if path.stat().st_size > MAX_BYTES:
        raise invalid(f"Dataset `{name}` is larger than {MAX_BYTES} bytes.")
    return path


def check_format(name: str) -> str:
    """The format (extension) of `name`; 400 when it is none of FORMATS."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in FORMATS:
        raise invalid(f"Dataset `{name}` is not one of the formats read: {formats()}.")
    return suffix


def read_dataset(content: bytes, name: str, text_column: str) -> list[dict[str, Any]]:
    """The rows of a dataset file named `name` (its extension says the format)."""
    suffix = check_format(name)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise invalid(f"Dataset `{name}` is not UTF-8 text (byte {exc.start}).") from None
    if suffix == ".jsonl":
        records = _jsonl(text, name)
    elif suffix == ".json":
        records = _json(text, name)
    else:
        records = _csv(text, name)
    rows = [finetune_row(record, f"`{name}` {where}", text_column) for where, record in records]
    if not rows:
        raise invalid(f"Dataset `{name}` has no rows.")
    return rows


def _jsonl(text: str, name: str) -> list[tuple[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise invalid(f"Dataset `{name}` line {number} is not JSON: {exc.msg}.") from None
    return records


def _json(text: str, name: str) -> list[tuple[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid(
            f"Dataset `{name}` is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        ) from None
    if not isinstance(value, list):
        raise invalid(f"Dataset `{name}` is not a JSON array of rows.")
    return [(f"row {number}", record) for number, record in enumerate(value, 1)]


def _csv(text: str, name: str) -> list[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return [(f"row {number}", record) for number, record in enumerate(reader, 1)]
    except csv.Error as exc:
        raise invalid(f"Dataset `{name}` is not valid CSV: {exc}.") from None


def finetune_row(record: Any, where: str, text_column: str) -> dict[str, Any]:
    """One row as the finetune trainer reads it; 400 naming `where` when it is none."""
    if not isinstance(record, dict):
        raise invalid(f"Dataset {where} is not an object with fields.")
    if "messages" in record:
        try:
            messages = msgspec.convert(record["messages"], list[TrainingMessage])
        except msgspec.ValidationError as exc:
            raise invalid(
                f"Dataset {where}: `messages` is not a list of chat turns: {exc}."
            ) from None
        try:
            return {"messages": check_messages(messages, "messages", assistant=True)}
        except InvalidRequest as exc:
            raise invalid(f"Dataset {where}: {exc.message}") from None
    if "prompt" in record or "completion" in record:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
            raise invalid(
                f"Dataset {where}: a prompt/completion row needs both as text, the "
                "completion not empty."
            )
        return {"prompt": prompt, "completion": completion}
    for column in (text_column, *TEXT_FALLBACKS):
        if column in record:
            value = record[column]
            if not isinstance(value, str) or not value.strip():
                raise invalid(f"Dataset {where}: `{column}` is not text, or is empty.")
            return {"text": value}
    fields = ", ".join(f"`{key}`" for key in list(record)[:10]) or "none"
    raise invalid(
        f"Dataset {where} has no `messages`, `prompt`/`completion` or text column "
        f"(`{text_column}`, `content`, `input`); its fields: {fields}."
    )
