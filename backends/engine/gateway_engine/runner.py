"""The runner contract: the only per-engine part of the engine.

The scheduler (`gateway_engine.scheduler`) decides what runs in a step; a runner only
computes it. Each sequence lives in a *slot* of the runner's KV cache. A `Work` item says
"these tokens of the sequence in slot S start at position P": a decode step is one token,
a prefill chunk is many. Writing at position P makes the slot's cache hold positions
`[0, P + len(tokens))`; whatever the slot held beyond P is overwritten or ignored, so
reusing a cached prefix is simply starting at its length.

Runners: the torch backend's (`gateway_torch.runners`: a flat ragged batch for
Llama-family models, one transformers forward per sequence for any other) and the onnx
backend's (`gateway_onnx.runner`, ONNX Runtime over an exported graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from gateway_engine.lora.batch import AdapterSet


@dataclass(frozen=True)
class Work:
    """Tokens of the sequence in `slot`, starting at position `start`."""

    slot: int
    start: int
    tokens: list[int]
    logits: bool
    """Whether the next-token logits after the last of `tokens` are wanted."""
    adapters: AdapterSet = ()
    """The LoRA adapters (and scales) the sequence runs with; empty: the base model."""


class Runner(Protocol):
    """Runs batches of `Work`; owns the KV cache of `slots` sequences of `context` tokens."""

    slots: int
    context: int
    name: str
    lora: bool
    """Whether `forward` applies the works' `adapters`."""
    torch_threads: int | None
    """torch's threads for the scheduler thread's own work (sampling, masks); None: the
    process's. A runner whose forward runs outside torch sets 1: torch's OpenMP workers
    spinning between steps would take the cores its own thread pool needs."""

    def forward(self, works: list[Work]) -> torch.Tensor:
        """The float32 `[rows, vocab]` logits of the works that asked for them, in order: a
        tensor of the caller's own, which it may change in place."""
        ...

    def export_slot(self, slot: int, length: int) -> list[torch.Tensor]:
        """A copy of the first `length` positions of `slot`'s cache (to save it)."""
        ...

    def import_slot(self, slot: int, state: list[torch.Tensor]) -> int:
        """Load a copy made by `export_slot` into `slot`; the number of positions."""
        ...


def saved_length(state: list[torch.Tensor], layers: int, context: int) -> int:
    """The positions a saved slot state (`export_slot`'s keys then values, one per layer)
    holds; raises ValueError when it cannot go into a slot of `layers` x `context`."""
    if len(state) != 2 * layers:
        raise ValueError("the saved state does not match this model's layers")
    length = int(state[0].shape[1])
    if length > context:
        raise ValueError(f"the saved state holds {length} positions; a slot holds {context}")
    return length


def warm_up(runner: Runner) -> None:
    """A prefill and a decode step, so the first request does not pay for lazy set-up
    (memory-mapped weights paged in, kernels selected)."""
    import torch

    with torch.inference_mode():
        runner.forward([Work(slot=0, start=0, tokens=[0] * 8, logits=True)])
        runner.forward([Work(slot=0, start=8, tokens=[0], logits=True)])
