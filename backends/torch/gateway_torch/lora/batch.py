"""The LoRA delta of one batched step: every row with its own adapter set.

A step's rows (tokens) carry adapter sets: none, one adapter, or a composition (the sum of
scaled deltas). For each fused projection group the delta is computed for the whole step,
S-LoRA / Punica style, without merging anything into the base weights and without
splitting the base matmul:

- *decode rows* (one-token works) are gathered per adapter into a `[K, L]` index (K adapters
  active in the step's decodes, L the most rows any of them has, padded with row 0 at scale
  0), and the delta is two batched matmuls over the stacked adapters (BGMV):
  `u = ((x[idx] @ A[K]) * scale) @ B[K]`, added back with one `index_add_`. The stacks of
  the active adapters are built once and reused for as long as the active set stays the
  same (a steady batch rebuilds nothing);
- *prefill chunks* (a run of rows of one sequence, one adapter set) are segments: for each
  adapter of the set, `y[rows] += scale * (x[rows] @ A) @ B` (SGMV), two plain matmuls.

A row in a composition appears once per adapter of its set, so the deltas sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gateway_torch.lora.weights import GROUPS, LoraWeights

AdapterSet = tuple[tuple[LoraWeights, float], ...]
"""A sequence's adapters with their scales; empty: the base model."""

Stack = tuple[torch.Tensor, torch.Tensor] | None
"""A group's `[K, in, R]` A stack and `[K, R, out]` B stack (None: no adapter touches it)."""


@dataclass
class _Chunk:
    row: int
    count: int
    weights: LoraWeights
    scale: float


class StackCache:
    """The stacked weights of the last active decode set (per layer and group)."""

    def __init__(self) -> None:
        self._key: tuple[int, ...] = ()
        self._stacks: list[dict[str, Stack]] = []

    def get(self, adapters: Sequence[LoraWeights], layers: int) -> list[dict[str, Stack]]:
        key = tuple(id(a) for a in adapters)
        if key != self._key or not self._stacks:
            self._stacks = [
                {group: _stack([a.layers[i].get(group) for a in adapters]) for group in GROUPS}
                for i in range(layers)
            ]
            self._key = key
        return self._stacks

    def clear(self) -> None:
        self._key, self._stacks = (), []


class LoraPlan:
    """Where each adapter's rows are in one step, and the stacks to multiply them by."""

    def __init__(
        self,
        rows: Sequence[tuple[int, int, AdapterSet]],
        layers: int,
        cache: StackCache,
        device: torch.device,
        dtype: torch.dtype,
    ):
        """`rows`: `(first row, row count, adapter set)` of each work that has adapters."""
        decode: dict[int, tuple[LoraWeights, list[int], list[float]]] = {}
        self.chunks: list[_Chunk] = []
        for row, count, adapters in rows:
            for weights, scale in adapters:
                if count == 1:
                    entry = decode.setdefault(id(weights), (weights, [], []))
                    entry[1].append(row)
                    entry[2].append(scale)
                else:
                    self.chunks.append(_Chunk(row, count, weights, scale))
        self.stacks: list[dict[str, Stack]] = []
        self.index = self.flat = self.scale = torch.empty(0)
        if decode:
            ordered = sorted(decode.values(), key=lambda e: e[0].key)
            width = max(len(e[1]) for e in ordered)
            index = torch.zeros((len(ordered), width), dtype=torch.long)
            weight = torch.zeros((len(ordered), width, 1), dtype=torch.float32)
            for k, (_, where, scales) in enumerate(ordered):
                index[k, : len(where)] = torch.tensor(where)
                weight[k, : len(scales), 0] = torch.tensor(scales)
            self.index = index.to(device)
            self.flat = self.index.view(-1)
            self.scale = weight.to(device, dtype)
            self.stacks = cache.get([e[0] for e in ordered], layers)

    def add(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add the group's LoRA delta for input rows `x` to its output `y`, in place."""
        if self.stacks:
            stack = self.stacks[layer][group]
            if stack is not None:
                a, b = stack
                shrunk = torch.bmm(x[self.index], a) * self.scale
                y.index_add_(0, self.flat, torch.bmm(shrunk, b).view(-1, y.shape[1]))
        for chunk in self.chunks:
            pair = chunk.weights.layers[layer].get(group)
            if pair is None:
                continue
            a, b = pair
            rows = slice(chunk.row, chunk.row + chunk.count)
            y[rows].addmm_(x[rows] @ a, b, alpha=chunk.scale)


def _stack(pairs: list[tuple[torch.Tensor, torch.Tensor] | None]) -> Stack:
    """Stack the adapters' `(A, B)` of one group, zero-padded to the largest rank."""
    present = [p for p in pairs if p is not None]
    if not present:
        return None
    rank = max(a.shape[1] for a, _ in present)
    first_a, first_b = present[0]
    a_stack = first_a.new_zeros((len(pairs), first_a.shape[0], rank))
    b_stack = first_b.new_zeros((len(pairs), rank, first_b.shape[1]))
    for k, pair in enumerate(pairs):
        if pair is not None:
            a, b = pair
            a_stack[k, :, : a.shape[1]] = a
            b_stack[k, : b.shape[0]] = b
    return a_stack, b_stack
