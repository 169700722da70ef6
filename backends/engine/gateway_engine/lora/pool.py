"""The resident adapters of one model: loaded once per version, least recently used evicted.

Requests name adapters; the pool turns `(name, version)` into fused weights
(`gateway_engine.lora.weights`), reading the files in a worker thread so that the event
loop and the step loop never wait on a disk. Concurrent requests for an adapter that is not
resident share one load. A new version of an adapter (the store replaced it) is a new key:
requests already running keep the version they started with, new ones get the new one, and
the old one ages out. Eviction only drops the pool's reference; a sequence that still runs
with an evicted adapter keeps its weights until it ends.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from gateway_engine.lora.weights import LoraWeights

Loader = Callable[[Path, str, str], LoraWeights]
"""Reads the adapter at a path as `(path, name, version)` (blocking)."""


class AdapterPool:
    def __init__(self, loader: Loader, capacity: int):
        self._loader = loader
        self.capacity = capacity
        self._resident: OrderedDict[tuple[str, str], LoraWeights] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future[LoraWeights]] = {}
        self.loads = 0

    def __len__(self) -> int:
        return len(self._resident)

    def resident(self) -> list[LoraWeights]:
        """Most recently used last."""
        return list(self._resident.values())

    async def get(self, name: str, version: str, path: Path) -> LoraWeights:
        key = (name, version)
        weights = self._resident.get(key)
        if weights is not None:
            self._resident.move_to_end(key)
            return weights
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[LoraWeights] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            weights = await asyncio.to_thread(self._loader, path, name, version)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it twice
            raise
        finally:
            self._loading.pop(key, None)
        future.set_result(weights)
        for old in [k for k in self._resident if k[0] == name]:
            del self._resident[old]  # an older version: requests that hold it keep it
        self._resident[key] = weights
        self.loads += 1
        while len(self._resident) > self.capacity:
            self._resident.popitem(last=False)
        return weights

    def forget(self, name: str) -> None:
        """Drop every resident version of `name` (deleted from the store)."""
        for key in [k for k in self._resident if k[0] == name]:
            del self._resident[key]
