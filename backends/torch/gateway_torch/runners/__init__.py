"""The torch backend's runners (`gateway_engine.runner.Runner`).

- `FlatRunner` (`runners.flat`): Llama-family models (Llama, Mistral, Qwen2, SmolLM)
  run as one flattened ragged batch, with a preallocated per-slot KV cache written in
  place. This is the fast path.
- `GenericRunner` (`runners.generic`): any other causal LM, one transformers forward per
  sequence with a `DynamicCache` per slot. Correct everywhere, batched nowhere, and
  without LoRA adapters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway_engine.runner import Runner

    from gateway_torch.loading import CausalModel


def make_runner(lm: CausalModel, slots: int, context: int) -> Runner:
    """The fastest runner that supports `lm`'s architecture."""
    from gateway_torch.runners.flat import FlatRunner, supports
    from gateway_torch.runners.generic import GenericRunner

    if supports(lm.model, context):
        return FlatRunner(lm, slots, context)
    return GenericRunner(lm, slots, context)
