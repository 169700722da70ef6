"""Memory figures for the model manager: the process's resident memory, what the machine
has available, and handing freed memory back to the operating system after an unload."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import sys

import psutil


def resident() -> int:
    """This process's resident set size in bytes."""
    return int(psutil.Process().memory_info().rss)


def available() -> int:
    """Bytes the machine can still give to processes without swapping."""
    return int(psutil.virtual_memory().available)


def total() -> int:
    """The machine's memory in bytes."""
    return int(psutil.virtual_memory().total)


def trim() -> None:
    """Collect garbage and ask the C allocator to return free heap pages (glibc keeps
    them otherwise, and an unloaded model's memory would not show as freed)."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: musl has no malloc_trim
        ctypes.CDLL(name).malloc_trim(0)


def parse_size(text: str | int) -> int:
    """`8GiB`, `512MB`, `1.5G`, `1000000` -> bytes (binary units for G/M/K alike)."""
    if isinstance(text, int):
        return text
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    factor = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        size = float(number) * factor
    except ValueError:
        raise ValueError(f"`{text}` is not a size (e.g. `8GiB`, `512MB`)") from None
    if size <= 0:
        raise ValueError(f"`{text}` is not a positive size")
    return int(size)
