"""Small helpers shared across the host."""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
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


def built_once(target: Path, ready: str, build: Callable[[Path], None]) -> Path:
    """The folder `target`, built first by `build(folder)` if `target / ready` is missing.

    The build writes into a temporary folder beside `target`, renamed into place when it
    is complete, so no reader ever sees half of it. Builds of one target are serialized
    by a lock file (`<target>.lock`): a second process waits and takes the first one's
    result instead of building it again, and the lock holder first removes temporary
    folders that a killed build left behind (a failed build removes its own)."""
    if (target / ready).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / ready).is_file():
            return target  # built by another process while this one waited
        for stale in target.parent.glob(f".{target.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(target)  # an incomplete folder from an older version
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
