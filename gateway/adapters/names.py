"""Adapter names: one path segment of letters, digits, `.`, `_` and `-`."""

from __future__ import annotations

import re

from gateway.errors import InvalidRequest

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_name(name: object, param: str = "name") -> str:
    """`name` if it is a valid adapter name; else a 400 that says why.

    Names are single path segments: letters, digits, `.`, `_`, `-`, at most 128 characters,
    not starting with `.` or `-` (names starting with `.` are the store's own).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = name if isinstance(name, str) else type(name).__name__
        raise InvalidRequest(
            f"Invalid adapter name `{shown}`: use 1 to 128 letters, digits, `.`, `_` or `-`, "
            "starting with a letter, digit or `_` (no `/`, no `..`).",
            param=param,
            code="invalid_adapter_name",
        )
    return name
