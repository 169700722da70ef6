"""The LoRA delta of one batched step: every row with its own adapter set.

A step's rows (tokens) carry adapter sets: none, one adapter, or a composition (the sum of
scaled deltas). For each fused projection group the delta is computed for the whole step,
S-LoRA / Punica style, without merging anything into the base weights and without
splitting the base matmul:

- *decode rows* (one-token works) are gathered per adapter into a `[K, L]` index (K adapters
  active in the step's decodes, L the most rows any of them has, padded with row 0 at scale
  0), and the delta is batched matmuls over the stacked adapters (BGMV): one shrink for the
  whole group, `t = (x[idx] @ A[K]) * scale`, then one expand per member projection,
  `t[member ranks] @ B_member[K]`, added into the member's output columns with
  `index_add_`. The stacks of the active adapters are built once and reused for as long as
  the active set stays the same (a steady batch rebuilds nothing);
- *prefill chunks* (a run of rows of one sequence, one adapter set) are segments: for each
  adapter of the set, `y[rows] += scale * (x[rows] @ A) @ B` (SGMV), plain matmuls.

A row in a composition appears once per adapter of its set, so the deltas sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gateway_torch.lora.weights import GROUPS, GroupLora, LoraWeights

AdapterSet = tuple[tuple[LoraWeights, float], ...]
"""A sequence's adapters with their scales; empty: the base model."""

Widths = dict[str, list[int]]
"""The output width of each member projection of each group (q, k, v; o; gate, up; down)."""


@dataclass
class Stack:
    """A group's weights for K adapters: `a` is `[K, in, R]` (member blocks of the largest
    rank each adapter has for that member), and per targeted member
    `(rank offset, rank, column offset, [K, rank, out] B)`."""

    a: torch.Tensor
    b: list[tuple[int, int, int, torch.Tensor]]


@dataclass
class _Chunk:
    row: int
    count: int
    weights: LoraWeights
    scale: float


class StackCache:
    """The stacked weights of the last active decode set (per layer and group)."""

    def __init__(self, widths: Widths) -> None:
        self.widths = widths
        self._key: tuple[int, ...] = ()
        self._stacks: list[dict[str, Stack | None]] = []

    def get(self, adapters: Sequence[LoraWeights], layers: int) -> list[dict[str, Stack | None]]:
        key = tuple(id(a) for a in adapters)
        if key != self._key or not self._stacks:
            self._stacks = [
                {
                    group: _stack([a.layers[i].get(group) for a in adapters], self.widths[group])
                    for group in GROUPS
                }
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
        self.widths = cache.widths
        self.stacks: list[dict[str, Stack | None]] = []
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
                shrunk = torch.bmm(x[self.index], stack.a) * self.scale
                for start, rank, column, b in stack.b:
                    out = torch.bmm(shrunk[:, :, start : start + rank], b)
                    width = b.shape[2]
                    y[:, column : column + width].index_add_(0, self.flat, out.view(-1, width))
        for chunk in self.chunks:
            weights = chunk.weights.layers[layer].get(group)
            if weights is None:
                continue
            rows = slice(chunk.row, chunk.row + chunk.count)
            shrunk = x[rows] @ weights.a
            start = column = 0
            for block, width in zip(weights.b, self.widths[group], strict=True):
                if block is not None:
                    rank = block.shape[0]
                    part = shrunk[:, start : start + rank]
                    y[rows, column : column + width].addmm_(part, block, alpha=chunk.scale)
                    start += rank
                column += width


def _stack(groups: list[GroupLora | None], widths: list[int]) -> Stack | None:
    """Stack K adapters' weights of one group, each member zero-padded to its largest rank."""
    present = [g for g in groups if g is not None]
    if not present:
        return None
    ranks = [max(g.ranks[m] for g in present) for m in range(len(widths))]
    first = present[0].a
    a_stack = first.new_zeros((len(groups), first.shape[0], sum(ranks)))
    b_stacks: list[tuple[int, int, int, torch.Tensor]] = []
    start = column = 0
    for member, (rank, width) in enumerate(zip(ranks, widths, strict=True)):
        if rank:
            b_stack = first.new_zeros((len(groups), rank, width))
            for k, group in enumerate(groups):
                block = None if group is None else group.b[member]
                if group is None or block is None:
                    continue
                own = group.ranks[member]
                offset = sum(group.ranks[:member])
                a_stack[k, :, start : start + own] = group.a[:, offset : offset + own]
                b_stack[k, :own] = block
            b_stacks.append((start, rank, column, b_stack))
        start, column = start + rank, column + width
    return Stack(a=a_stack, b=b_stacks)
