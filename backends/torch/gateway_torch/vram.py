"""A CUDA device's memory as a model manager pool (`gateway.engine.memory.MemoryPool`):
what this process holds there (the caching allocator's reserved bytes, which a load
grows and an unload gives back with `empty_cache`), and what the device has free
(`cudaMemGetInfo`, which counts other processes too)."""

from __future__ import annotations

import torch

from gateway.engine.memory import MemoryPool, trim


class CudaMemory(MemoryPool):
    accelerator = True

    def __init__(self, device: torch.device):
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        self.name = f"cuda:{index}"

    def used(self) -> int:
        return int(torch.cuda.memory_reserved(self.device))

    def available(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(free)

    def total(self) -> int:
        _, total = torch.cuda.mem_get_info(self.device)
        return int(total)

    def trim(self) -> None:
        trim()  # collects the tensors' last references first
        torch.cuda.empty_cache()
