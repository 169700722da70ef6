"""Small helpers shared across the host."""

from __future__ import annotations

import inspect
import ipaddress
from typing import Any


async def await_me_maybe(value: Any) -> Any:
    """Hooks may return a value, an awaitable, or a callable returning either."""
    if callable(value):
        value = value()
    if inspect.isawaitable(value):
        value = await value
    return value


def is_loopback_host(host: str) -> bool:
    """`localhost` (or a name under it) or a loopback address: this machine."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
