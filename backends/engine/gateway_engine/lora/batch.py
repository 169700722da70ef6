"""The LoRA delta of one batched step: every row with its own adapter set.

A step's rows (tokens) carry adapter sets: none, one adapter, or a composition (the sum of
scaled deltas). For each fused projection group the delta is computed for the whole step,
S-LoRA / Punica style, without merging anything into the base weights and without
splitting the base matmul:

- *decode rows* (one-token works) of the K adapters active in the step's decodes are laid
  out as `[K, L]` (L rows per adapter), and the delta is two batched matmuls over the
  stacked adapters (BGMV): `y[rows] += ((x[rows] @ A[K]) * scale) @ B[K]`. The scheduler
  orders a step's works by adapter set, so usually each adapter's rows are adjacent and
  equally many: then `x[rows]` is a view and the expand is one in-place `baddbmm_` into
  `y` (2 operations per group, 3 with scales other than 1). Otherwise rows are gathered
  (`index_select`, padded with row 0 at scale 0) and added back with `index_add_`. The
  stacks of the active adapters are built once and reused for as long as the active set
  stays the same (a steady batch rebuilds nothing). Stacking copies weights, so a step
  whose set differs from the step before (requests joining or leaving) adds each adapter's
  decode rows as segments instead, and the stacks are built once the set holds;
- *prefill chunks* (a run of rows of one sequence, one adapter set) are segments: for each
  adapter of the set, `y[rows] += scale * (x[rows] @ A) @ B` (SGMV), two plain matmuls;
  adjacent chunks of the same adapter and scale (the scheduler puts them together) are one
  segment.

A row in a composition appears once per adapter of its set, so the deltas sum. Each op has
a fixed cost on a CPU that dwarfs a small adapter's arithmetic, so the plan's job is to
issue as few as it can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gateway_engine.lora.weights import GROUPS, GroupLora, LoraWeights

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
    """The stacked weights of the active decode set (per layer and group).

    Stacking copies every active adapter's weights, so it is done only for a set that
    holds: a step whose set differs from the step before (requests joining or leaving)
    gets None, and its plan adds each adapter's rows as segments instead.
    """

    def __init__(self) -> None:
        self._adapters: tuple[LoraWeights, ...] = ()
        """The adapters the stacks hold, kept alive: compared by identity, a freed one's
        address could otherwise come back as another adapter's."""
        self._stacks: list[dict[str, Stack]] = []
        self._last: tuple[LoraWeights, ...] = ()
        """The set asked for by the step before."""

    def get(self, adapters: Sequence[LoraWeights], layers: int) -> list[dict[str, Stack]] | None:
        wanted = tuple(adapters)
        settled = _same(wanted, self._last)
        self._last = wanted
        if _same(wanted, self._adapters) and self._stacks:
            return self._stacks
        if not settled:
            return None
        self._stacks = [
            {group: _stack([a.layers[i].get(group) for a in wanted]) for group in GROUPS}
            for i in range(layers)
        ]
        self._adapters = wanted
        return self._stacks


def _same(a: tuple[LoraWeights, ...], b: tuple[LoraWeights, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


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
                    self._segment(row, count, weights, scale)
        self.stacks: list[dict[str, Stack]] = []
        self.block: tuple[int, int, int] | None = None
        self.index = self.scale = torch.empty(0)
        self.unit = True
        if not decode:
            return
        ordered = sorted(decode.values(), key=lambda e: e[1][0])  # by first row
        stacks = cache.get([e[0] for e in ordered], layers)
        if stacks is None:  # a passing set: each adapter's decode rows as segments
            for weights, where, factors in ordered:
                for row, scale in zip(where, factors, strict=True):
                    self._segment(row, 1, weights, scale)
            return
        self.stacks = stacks
        width = max(len(e[1]) for e in ordered)
        flat_rows = [r for e in ordered for r in e[1]]
        scales = [s for e in ordered for s in e[2]]
        self.unit = all(s == 1.0 for s in scales)
        first = flat_rows[0]
        if all(len(e[1]) == width for e in ordered) and flat_rows == list(
            range(first, first + len(flat_rows))
        ):
            self.block = (first, len(ordered), width)  # adjacent and even: views, no gather
            if not self.unit:
                self.scale = torch.tensor(scales, device=device, dtype=dtype).view(
                    len(ordered), width, 1
                )
            return
        index = torch.zeros((len(ordered), width), dtype=torch.long)
        weight = torch.zeros((len(ordered), width, 1), dtype=torch.float32)
        for k, (_, where, factors) in enumerate(ordered):
            index[k, : len(where)] = torch.tensor(where)
            weight[k, : len(factors), 0] = torch.tensor(factors)
        self.index = index.view(-1).to(device)
        self.scale = weight.to(device, dtype)

    def _segment(self, row: int, count: int, weights: LoraWeights, scale: float) -> None:
        last = self.chunks[-1] if self.chunks else None
        if (
            last is not None
            and last.weights is weights
            and last.scale == scale
            and last.row + last.count == row
        ):
            last.count += count  # adjacent rows of one adapter: one segment
        else:
            self.chunks.append(_Chunk(row, count, weights, scale))

    def add(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add the group's LoRA delta for input rows `x` to its output `y`, in place."""
        if self.stacks:
            stack = self.stacks[layer][group]
            if stack is not None:
                a, b = stack
                if self.block is not None:
                    first, count, width = self.block
                    end = first + count * width
                    shrunk = torch.bmm(x[first:end].view(count, width, -1), a)
                    if not self.unit:
                        shrunk = shrunk * self.scale
                    y[first:end].view(count, width, -1).baddbmm_(shrunk, b)
                else:
                    gathered = x.index_select(0, self.index).view(a.shape[0], -1, x.shape[1])
                    shrunk = torch.bmm(gathered, a) * self.scale
                    y.index_add_(0, self.index, torch.bmm(shrunk, b).view(-1, y.shape[1]))
        for chunk in self.chunks:
            weights = chunk.weights.layers[layer].get(group)
            if weights is None:
                continue
            rows = slice(chunk.row, chunk.row + chunk.count)
            y[rows].addmm_(x[rows] @ weights.a, weights.b, alpha=chunk.scale)


def _stack(groups: list[GroupLora | None]) -> Stack:
    """Stack K adapters' weights of one group, zero-padded to the largest rank (an adapter's
    A columns and B rows line up, so padding at the end is exact)."""
    present = [g for g in groups if g is not None]
    if not present:
        return None
    rank = max(g.a.shape[1] for g in present)
    first = present[0]
    a_stack = first.a.new_zeros((len(groups), first.a.shape[0], rank))
    b_stack = first.b.new_zeros((len(groups), rank, first.b.shape[1]))
    for k, group in enumerate(groups):
        if group is not None:
            a_stack[k, :, : group.a.shape[1]] = group.a
            b_stack[k, : group.b.shape[0]] = group.b
    return a_stack, b_stack
