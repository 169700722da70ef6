"""Random LoRA adapters for a model: what tests and benchmarks serve when no training ran.

`write_random_adapter` builds a real PEFT adapter (peft's own `LoraConfig` and
`save_pretrained`) with random A and B, B scaled by `strength` so that the adapter moves the
model's outputs visibly without turning them into noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_random_adapter(
    model: Any,
    path: Path,
    *,
    rank: int = 8,
    alpha: int | None = None,
    targets: Sequence[str] = ALL_LINEAR,
    seed: int = 0,
    strength: float = 0.1,
) -> Path:
    """Save a random PEFT LoRA adapter for `model` at `path` (created). `model` is left as
    it was: peft wraps a shallow copy whose injected layers are removed afterwards."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        target_modules=list(targets),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    generator = torch.Generator().manual_seed(seed)
    wrapped = get_peft_model(model, config)
    try:
        with torch.no_grad():
            for name, param in wrapped.named_parameters():
                if "lora_A" in name:
                    param.copy_(
                        torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5
                    )
                elif "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * strength)
        wrapped.save_pretrained(str(path))
    finally:
        wrapped.unload()  # take the LoRA layers out of `model` again
    return path
