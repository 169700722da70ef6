"""Prompt forms shared by dialects."""

from __future__ import annotations

from gateway.errors import InvalidRequest


def prompt_batch(raw: str | list[str | int | list[int]], param: str) -> list[str | list[int]]:
    """OpenAI's prompt/input forms: text, token ids, a list of texts, a list of token lists."""
    if isinstance(raw, str):
        return [raw]
    if not raw:
        raise InvalidRequest(f"`{param}` must not be empty.", param=param)
    if all(isinstance(p, int) for p in raw):
        return [list(raw)]  # type: ignore[arg-type]
    if any(isinstance(p, int) for p in raw):
        raise InvalidRequest(f"`{param}` mixes token ids with texts or token lists.", param=param)
    return list(raw)  # type: ignore[arg-type]
