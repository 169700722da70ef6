"""What the engine needs of a loaded language model (`gateway_torch.loading.CausalModel`
is one): its tokenizer's views, end tokens, device and serving options, and the torch
module that adapters are read against."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from gateway_engine.tokens import PromptEncoder, TokenPieces


class EngineOptions(Protocol):
    """The options the engine reads (`gateway_torch.options.RuntimeOptions` has them)."""

    @property
    def slots(self) -> int: ...
    @property
    def prefill_chunk(self) -> int: ...
    @property
    def max_adapters(self) -> int: ...
    @property
    def device(self) -> Any: ...
    @property
    def dtype(self) -> Any: ...


class LanguageModel(Protocol):
    """A loaded causal LM as the scheduler and the engine backend use it."""

    @property
    def model(self) -> Any:
        """The torch module: LoRA adapters are read and checked against its layers."""

    @property
    def tokenizer(self) -> Any: ...
    @property
    def encoder(self) -> PromptEncoder: ...
    @property
    def pieces(self) -> TokenPieces: ...
    @property
    def options(self) -> EngineOptions: ...
    @property
    def context_length(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def eos_ids(self) -> frozenset[int]: ...
    @property
    def folder(self) -> Path: ...
    @property
    def load_seconds(self) -> float: ...
    @property
    def device(self) -> Any: ...
