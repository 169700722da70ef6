"""What went wrong with a request body, worded once for every family's error shape."""

from __future__ import annotations

import re

from litestar.exceptions import HTTPException, ValidationException


def validation_problem(exc: ValidationException) -> tuple[str | None, str]:
    """The offending field (dotted, or None) and a sentence naming it and the reason."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    if not problems:
        return None, http_detail(exc)
    first = problems[0]
    key = str(first.get("key") or "") or None
    reason = re.sub(r" - at `\$[^`]*`$", "", str(first.get("message", "invalid value")))
    missing = re.search(r"missing required field `([^`]+)`", reason)
    if missing:
        key = missing.group(1) if key in (None, "data") else f"{key}.{missing.group(1)}"
        return key, f"Missing required field `{key}`."
    message = f"Invalid value for `{key}`: {reason}" if key else f"Invalid request body: {reason}"
    return key, message


def http_detail(exc: HTTPException) -> str:
    detail = exc.detail or "Bad request"
    # msgspec's decode errors: "JSON is malformed: ...", "Input data was truncated".
    if exc.status_code == 400 and ("malformed" in detail or "truncated" in detail):
        return f"We could not parse the JSON body of your request: {detail}"
    return detail
