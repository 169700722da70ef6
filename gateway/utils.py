"""Small helpers shared across the host."""

from __future__ import annotations

import inspect
from typing import Any


async def await_me_maybe(value: Any) -> Any:
    """Hooks may return a value, an awaitable, or a callable returning either."""
    if callable(value):
        value = value()
    if inspect.isawaitable(value):
        value = await value
    return value
