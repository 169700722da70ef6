"""Memory figures for the model manager: the process's resident memory, what the machine
has available, and handing freed memory back to the operating system after an unload.

A model's weights and KV cache live in one `MemoryPool`: the host's memory (`HostMemory`,
the default) or an accelerator's, which the backend that puts it there describes (the
torch backend's `gateway_torch.vram.CudaMemory`). The manager judges each load against
its own pool's room and budget, so a model on the GPU never evicts one in RAM."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import sys
from abc import ABC, abstractmethod

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


class MemoryPool(ABC):
    """Where models' memory comes from: the host's (`HostMemory`) or an accelerator's,
    whose pool sets `accelerator` (its budget is `[model_manager] vram_budget`)."""

    name: str
    """`host`, `cuda:0`: models in pools of one name share its room."""
    accelerator: bool = False

    @abstractmethod
    def used(self) -> int:
        """Bytes this process holds in the pool (a load's growth is measured with it)."""

    @abstractmethod
    def available(self) -> int:
        """Bytes the pool can still give."""

    @abstractmethod
    def total(self) -> int: ...

    def trim(self) -> None:
        """Give memory freed by an unload back (the host's allocator too)."""
        trim()


class HostMemory(MemoryPool):
    """The machine's RAM: `resident()`, `available()`, `total()`."""

    name = "host"

    def used(self) -> int:
        return resident()

    def available(self) -> int:
        return available()

    def total(self) -> int:
        return total()


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
