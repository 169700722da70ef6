"""Reading a PEFT LoRA adapter into the fused layout of the flat runner.

The flat runner multiplies q/k/v as one matrix and gate/up as one (`runners.flat`); an
adapter is laid out the same way, per layer and per *group* of projections (`GroupLora`):

- `a` is `[in, r_g]`: the members' `lora_A` matrices side by side (q's rank, then k's, ...);
- `b` is `[r_g, out_g]`: block-diagonal, member `i`'s `lora_B` (times its scaling, alpha/r
  or alpha/sqrt(r) with rsLoRA) in the rows of its rank and the columns of its output.

So a step computes a group's delta with two matmuls, `(x @ a) @ b`, whatever subset of the
group's projections the adapter targets (a member it does not target has rank 0). The
zero blocks of `b` cost multiplications, but on a CPU the number of operations per step
matters more than their size (see `benchmarks/README.md`).

`read_adapter` also checks that the adapter fits the model, and says what differs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gateway.errors import InvalidRequest

GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "out": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
"""The runner's fused matrices and the projections each one stacks, in order."""
_PARENT = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$"
)


@dataclass
class GroupLora:
    """An adapter's weights for one fused projection group of one layer."""

    a: torch.Tensor
    """`[in, sum of ranks]`: the members' A matrices side by side."""
    b: torch.Tensor
    """`[sum of ranks, sum of outputs]`: the members' B matrices (scaling folded in) on
    the block diagonal."""
    ranks: list[int]
    """Each member's rank (0: not targeted)."""


@dataclass
class LoraWeights:
    """One adapter version, per layer: `layers[i][group]` for the groups it targets."""

    name: str
    version: str
    rank: int
    target_modules: list[str]
    layers: list[dict[str, GroupLora]] = field(repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for layer in self.layers
            for group in layer.values()
            for t in (group.a, group.b)
        )


def mismatch(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="adapter", code="adapter_mismatch")


def read_config(path: Path) -> dict[str, Any]:
    """`adapter_config.json`, refused unless it is a plain LoRA this engine can serve."""
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise mismatch(f"The adapter has no readable adapter_config.json: {exc}") from exc
    if not isinstance(config, dict):
        raise mismatch("adapter_config.json is not a JSON object.")
    if config.get("peft_type", "LORA") != "LORA":
        raise mismatch(f"Only LoRA adapters are served; this one is {config.get('peft_type')}.")
    if config.get("use_dora"):
        raise mismatch("DoRA adapters (`use_dora`) are not supported; use plain LoRA.")
    if config.get("modules_to_save"):
        raise mismatch(
            f"Adapters that replace whole modules (`modules_to_save`: "
            f"{config['modules_to_save']}) are not supported."
        )
    if config.get("bias", "none") != "none":
        raise mismatch(f"LoRA biases (`bias`: {config['bias']}) are not supported.")
    return config


def read_adapter(
    path: Path, model: Any, *, name: str = "", version: str = "", device: Any = None
) -> LoraWeights:
    """Load the adapter at `path` for `model` (a transformers Llama-family causal LM),
    fused per layer. InvalidRequest (`adapter_mismatch`) says what does not fit."""
    from peft.utils.other import get_pattern_key
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(path)
    try:
        tensors = load_file(str(path / "adapter_model.safetensors"), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise mismatch(f"adapter_model.safetensors cannot be read: {exc}") from exc
    layers = model.model.layers
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None or match.group(3) not in _PARENT:
            raise mismatch(
                f"The adapter changes `{key}`; only the attention and MLP projections "
                f"({', '.join(_PARENT)}) of decoder layers are supported."
            )
        index, parent, module, side = (
            int(match.group(1)),
            match.group(2),
            match.group(3),
            match.group(4),
        )
        if parent != _PARENT[module] or index >= len(layers):
            raise mismatch(
                f"The adapter has weights for `{key}`, but the base model has "
                f"{len(layers)} layers with {module} under {_PARENT[module]}: it was trained "
                "for a different architecture."
            )
        found.setdefault((index, module), {})[side] = tensor
    if not found:
        raise mismatch("adapter_model.safetensors holds no LoRA weights.")
    dtype = next(model.parameters()).dtype
    device = device if device is not None else next(model.parameters()).device
    alpha = float(config.get("lora_alpha", 8))
    alphas: dict[str, float] = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    per_layer: list[dict[str, GroupLora]] = [{} for _ in layers]
    ranks: set[int] = set()
    for index, layer in enumerate(layers):
        for group, members in GROUPS.items():
            parts: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []
            for module in members:
                base = getattr(getattr(layer, _PARENT[module]), module).weight
                out_features, in_features = base.shape
                pair = found.get((index, module))
                if pair is None:
                    parts.append((torch.empty(0), torch.empty(0), out_features, 0))
                    continue
                if set(pair) != {"A", "B"}:
                    raise mismatch(f"Layer {index} {module} has lora_A or lora_B but not both.")
                a, b = pair["A"], pair["B"]
                rank = a.shape[0]
                if a.dim() != 2 or b.dim() != 2 or b.shape[1] != rank:
                    raise mismatch(
                        f"Layer {index} {module}: lora_A {tuple(a.shape)} and lora_B "
                        f"{tuple(b.shape)} do not make a rank-r pair."
                    )
                if a.shape[1] != in_features or b.shape[0] != out_features:
                    raise mismatch(
                        f"Layer {index} {module}: the base model's projection is "
                        f"{in_features} -> {out_features}, the adapter's is "
                        f"{a.shape[1]} -> {b.shape[0]}: it was trained for another model."
                    )
                module_name = f"model.layers.{index}.{_PARENT[module]}.{module}"
                module_alpha = alpha
                if alphas:
                    pattern = get_pattern_key(list(alphas), module_name)
                    module_alpha = float(alphas.get(pattern, alpha))
                scaling = module_alpha / (math.sqrt(rank) if rslora else rank)
                parts.append((a.float(), b.float() * scaling, out_features, rank))
                ranks.add(rank)
            present = [p for p in parts if p[3]]
            if not present:
                continue
            total = sum(p[3] for p in parts)
            fused_a = torch.cat([a.T for a, _, _, _ in present], dim=1)
            fused_b = torch.zeros((total, sum(p[2] for p in parts)))
            row = column = 0
            for _, b, out_features, rank in parts:
                if rank:
                    fused_b[row : row + rank, column : column + out_features] = b.T
                row, column = row + rank, column + out_features
            per_layer[index][group] = GroupLora(
                a=fused_a.to(device, dtype).contiguous(),
                b=fused_b.to(device, dtype).contiguous(),
                ranks=[p[3] for p in parts],
            )
    modules = sorted({module for _, module in found})
    return LoraWeights(
        name=name or path.name,
        version=version,
        rank=max(ranks),
        target_modules=modules,
        layers=per_layer,
    )
