"""`OnnxRunner`: the engine's runner (`gateway_engine.runner.Runner`) over ONNX Runtime.

The scheduler, sampler pipeline, constraints, prompt cache and slot save/restore are the
engine's own; this runner only computes a step's logits with the graph of
`gateway_onnx.graph`.

The KV cache is one numpy array per layer and kind, `[slots, kv_heads, context,
head_dim]`, bound to the graph's cache input and output at the same address, so
`GroupQueryAttention` writes new keys and values in place and no step copies a cache. A
run covers a contiguous range of cache rows. A step is one run for all its one-token works
(decodes), in rows `0..n-1`; one for all its prompts that start at position 0, padded to
the longest, in the rows after them; and one per chunk that continues a cached prefix
(`GroupQueryAttention` batches several new tokens per row only when no row has a past).
Slots are the scheduler's names for sequences; the rows they occupy move: before a run, a
slot outside the run's rows swaps rows with one that is not in the run (both caches copied,
up to their lengths). A sequence moves when it starts, when it starts decoding, and when
one ahead of it ends.

LoRA: with a second export that has LoRA inputs (`gateway_onnx.graph.LORA_GROUPS`), a run
in which any work carries adapters runs on that graph. Its rows are grouped into entries,
one per adapter set (adapters and scales), and each entry's tokens are multiplied by that
entry's weights alone: the segmented matmuls of Punica and S-LoRA, so rows with different
adapter sets, compositions and no adapter share one run, and a token costs only its own
adapters' work. An entry's weights are built once (side by side along the rank axis, its
scales folded into B; int8 with per-column scales on a quantized export) and kept
(`MAX_ENTRIES`); a run's entries are stacked once per set of entries and kept while the
set holds (`MAX_STACKS`). Runs without adapters take the plain graph: the LoRA graph's
extra ops would cost them time for nothing.

Batch invariance: a row's logits must not depend on which rows share its run, or a
request's greedy text would change with the server's load. ONNX Runtime's `MatMulNBits`
takes another kernel for a single row than for several, and at some block sizes (128 and
up with int8 on an AVX-512 CPU) the two round differently. The runner checks this when it
starts: if one token alone gives other logits than the same token beside another row, every
run of a single token gets a second, scratch row (a cache row no slot owns), so all runs
take the many-row kernel. Integer projections (`gateway_onnx.graph.quantize_rows`) are
invariant by construction: each row is quantized on its own and integer sums are exact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from gateway_engine.runner import Work

if TYPE_CHECKING:
    import torch
    from gateway_engine.lora.batch import AdapterSet
    from gateway_engine.lora.weights import LoraWeights

    from gateway_onnx.graph import Shape


def session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: shape-merge notes are not for users
    return options


class OnnxRunner:
    """Runs `Work` batches of an exported Llama-family model (`gateway_onnx.export`)."""

    torch_threads: int | None = 1
    """The scheduler thread's sampling runs on one torch thread: with torch's OpenMP
    workers spinning between steps, ONNX Runtime's own pool lost a third of its speed
    (measured 97 vs 148 tok/s at 1 row, 310 vs 484 at 16)."""

    def __init__(
        self,
        model: Path,
        shape: Shape,
        slots: int,
        context: int,
        *,
        name: str = "onnx",
        threads: int | None = None,
        vocab_limit: int | None = None,
        lora_model: Path | None = None,
    ):
        import onnxruntime as ort

        self.name = name
        self.slots, self.context = slots, context
        self.shape = shape
        self.vocab_limit = vocab_limit or shape.vocab
        options = session_options(threads)
        providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(model), options, providers=providers)
        self.lora = lora_model is not None
        self.lora_session = (
            ort.InferenceSession(str(lora_model), options, providers=providers)
            if lora_model is not None
            else None
        )
        self._stacks: dict[tuple[Any, ...], _Stacks] = {}
        self._entries: dict[tuple[Any, ...], _Entry] = {}
        self.lora_integer = self.lora_session is not None and any(
            i.name.startswith("lora_a_scale_") for i in self.lora_session.get_inputs()
        )
        self._scratch = slots
        """The slot id of the scratch row (its length stays 0: it holds nothing)."""
        dims = (slots + 1, shape.kv_heads, context, shape.head_dim)
        # np.zeros maps zeroed pages lazily: an unused slot costs no memory.
        self.keys = [np.zeros(dims, np.float32) for _ in range(shape.layers)]
        self.values = [np.zeros(dims, np.float32) for _ in range(shape.layers)]
        self._row_bytes = shape.kv_heads * context * shape.head_dim * 4
        self._row_of = list(range(slots + 1))
        self._slot_at = list(range(slots + 1))
        self._length = [0] * (slots + 1)
        self._bindings: dict[tuple[bool, int, int], _Binding] = {}
        self.pads_single_tokens = self._single_token_rounds_apart()

    def _single_token_rounds_apart(self) -> bool:
        """Whether a one-token run's logits differ from the same token's beside a second
        row (module docstring); the probe's cache writes are past every slot's length."""
        token = [min(1, self.shape.vocab - 1)]
        alone = self._run(0, [Work(0, 0, token, True)])
        beside = self._run(0, [Work(0, 0, token, True), Work(self._scratch, 0, token, False)])
        return not np.array_equal(alone[0], beside[0])

    def forward(self, works: list[Work]) -> torch.Tensor:
        import torch

        logits: dict[int, np.ndarray] = {}
        decodes = [i for i, work in enumerate(works) if len(work.tokens) == 1]
        chunks = [i for i, work in enumerate(works) if len(work.tokens) > 1]
        if decodes:
            logits.update(self._batch(works, decodes, first=0))
        # Prompts that start at position 0 share one run, padded to the longest, in the
        # rows after the decodes (GroupQueryAttention batches several tokens per row only
        # without a past); a chunk that continues a cached prefix runs alone.
        together = [i for i in chunks if works[i].start == 0]
        if together:
            logits.update(self._batch(works, together, first=len(decodes)))
        for i in chunks:
            if i not in together:
                logits.update(self._batch(works, [i], first=len(decodes)))
        wanted = [logits[i] for i, work in enumerate(works) if work.logits]
        if not wanted:
            return torch.empty((0, self.shape.vocab), dtype=torch.float32)
        result = torch.from_numpy(np.stack(wanted))
        if self.vocab_limit < result.shape[-1]:
            result[:, self.vocab_limit :] = float("-inf")  # padding rows with no token
        return result

    def _batch(self, works: list[Work], indices: list[int], first: int) -> dict[int, np.ndarray]:
        """Run `works[indices]` in one session run at rows `first..`; their logits."""
        batch = [works[i] for i in indices]
        if self.pads_single_tokens and len(batch) == 1 and len(batch[0].tokens) == 1:
            batch.append(Work(self._scratch, 0, batch[0].tokens, False))
        self._place([work.slot for work in batch], first)
        order = sorted(range(len(batch)), key=lambda k: self._row_of[batch[k].slot])
        out = self._run(first, [batch[k] for k in order])
        logits: dict[int, np.ndarray] = {}
        for row, k in enumerate(order):
            if k < len(indices):
                work = batch[k]
                self._length[work.slot] = work.start + len(work.tokens)
                logits[indices[k]] = out[row]
        return logits

    def _place(self, slots: list[int], first: int) -> None:
        """Move `slots` into rows `first..first+len(slots)-1`, swapping out the rows of
        other slots."""
        end = first + len(slots)
        group = set(slots)
        outside = [s for s in slots if not first <= self._row_of[s] < end]
        free = [r for r in range(first, end) if self._slot_at[r] not in group]
        for slot, row in zip(outside, free, strict=True):
            self._swap(self._row_of[slot], row)

    def _swap(self, a: int, b: int) -> None:
        slot_a, slot_b = self._slot_at[a], self._slot_at[b]
        len_a, len_b = self._length[slot_a], self._length[slot_b]
        for cache in (*self.keys, *self.values):
            held = cache[a, :, :len_a].copy()
            cache[a, :, :len_b] = cache[b, :, :len_b]
            cache[b, :, :len_a] = held
        self._slot_at[a], self._slot_at[b] = slot_b, slot_a
        self._row_of[slot_a], self._row_of[slot_b] = b, a

    def _run(self, first: int, works: list[Work]) -> np.ndarray:
        """One session run of `works` at rows `first..first+len(works)-1`, each padded to
        the longest; the logits after each work's last token."""
        rows = len(works)
        width = max(len(work.tokens) for work in works)
        tokens = np.zeros((rows, width), dtype=np.int64)
        adapted = any(work.adapters for work in works)
        for k, work in enumerate(works):
            tokens[k, : len(work.tokens)] = work.tokens
        # Every row counts as `width` new tokens: padding lands after a row's real
        # tokens, in positions its next work overwrites.
        seqlens = np.asarray([work.start + width - 1 for work in works], dtype=np.int32)
        last = np.asarray(
            [k * width + len(work.tokens) - 1 for k, work in enumerate(works)], dtype=np.int64
        )
        total = np.asarray(max(work.start for work in works) + width, dtype=np.int32)
        bound = self._binding(adapted, first, rows)
        binding = bound.binding
        if adapted:
            self._bind_lora(bound, works, width)
        binding.bind_cpu_input("input_ids", tokens)
        binding.bind_cpu_input("seqlens_k", seqlens)
        binding.bind_cpu_input("total_sequence_length", total)
        binding.bind_cpu_input("logit_index", last)
        out = np.empty((rows, self.shape.vocab), dtype=np.float32)
        binding.bind_output("logits", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        bound.session.run_with_iobinding(binding)
        return out

    def _bind_lora(self, bound: _Binding, works: list[Work], width: int) -> None:
        """Bind the weights of `works`' entries (an entry: the rows that share an adapter
        set, `gateway_onnx.graph.LORA_GROUPS`), which tokens each entry gathers, and where
        each token finds its delta."""
        entries: dict[tuple[tuple[int, float], ...], list[int]] = {}
        for k, work in enumerate(works):
            if work.adapters:
                adapter_set = tuple((id(weights), factor) for weights, factor in work.adapters)
                entries.setdefault(adapter_set, []).append(k)
        tokens = [sum(len(works[k].tokens) for k in ks) for ks in entries.values()]
        span = max(tokens)
        if sum(tokens) < len(works) * width and min(tokens) == span:
            span += 1  # a padding slot, whose delta is 0, for the tokens without adapters
        rows = np.zeros((len(entries), span, 2), np.int64)
        slot = np.zeros((len(entries), span, 1), np.float32)
        back = np.zeros((len(works), width, 2), np.int64)
        padding = next((e for e, n in enumerate(tokens) if n < span), 0)
        back[:, :, 0], back[:, :, 1] = padding, span - 1
        for e, ks in enumerate(entries.values()):
            j = 0
            for k in ks:
                n = len(works[k].tokens)
                rows[e, j : j + n, 0], rows[e, j : j + n, 1] = k, np.arange(n)
                slot[e, j : j + n] = 1.0
                back[k, :n, 0], back[k, :n, 1] = e, np.arange(j, j + n)
                j += n
        for name, array in (("lora_rows", rows), ("lora_slot", slot), ("lora_back", back)):
            bound.binding.bind_cpu_input(name, array)
        bound.inputs = [rows, slot, back]  # alive until the run
        key: tuple[Any, ...] = tuple(entries)
        if bound.stacks is not None and bound.stacks.key == key:
            return  # the binding holds these entries' weights already
        stacks = self._stacks.get(key)
        if stacks is None:
            stacks = _Stacks(
                key,
                [self._entry(works[ks[0]].adapters, held) for held, ks in entries.items()],
                self.lora_integer,
            )
            if len(self._stacks) >= MAX_STACKS:
                self._stacks.pop(next(iter(self._stacks)))
            self._stacks[key] = stacks
        for name, array in stacks.arrays.items():
            bound.binding.bind_cpu_input(name, array)
        bound.stacks = stacks

    def _entry(self, adapters: AdapterSet, key: tuple[tuple[int, float], ...]) -> _Entry:
        """The weights of one adapter set (its scales folded in), cached by `key`."""
        entry = self._entries.pop(key, None) or _Entry(adapters, self.shape, self.lora_integer)
        self._entries[key] = entry  # most recently used last
        if len(self._entries) > MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)))
        return entry

    def _binding(self, adapted: bool, first: int, rows: int) -> _Binding:
        """The IO binding of cache rows `first..first+rows-1` on the plain or the LoRA
        graph: the caches' addresses never change, so each range's 4 x layers cache
        bindings are made once and reused."""
        bound = self._bindings.get((adapted, first, rows))
        if bound is not None:
            return bound
        session = self.lora_session if adapted else self.session
        if session is None:
            raise ValueError(f"the `{self.name}` runner has no LoRA graph")
        binding = session.io_binding()
        dims = [rows, self.shape.kv_heads, self.context, self.shape.head_dim]
        offset = first * self._row_bytes
        for i in range(self.shape.layers):
            for kind, cache in (("key", self.keys[i]), ("value", self.values[i])):
                address = cache.ctypes.data + offset
                binding.bind_input(f"past_{kind}_{i}", "cpu", 0, np.float32, dims, address)
                binding.bind_output(f"present_{kind}_{i}", "cpu", 0, np.float32, dims, address)
        bound = _Binding(session, binding)
        self._bindings[(adapted, first, rows)] = bound
        return bound

    def export_slot(self, slot: int, length: int) -> list[torch.Tensor]:
        import torch

        row = self._row_of[slot]
        keys = [torch.from_numpy(k[row, :, :length].copy()) for k in self.keys]
        values = [torch.from_numpy(v[row, :, :length].copy()) for v in self.values]
        return keys + values

    def import_slot(self, slot: int, state: list[torch.Tensor]) -> int:
        from gateway_engine.runner import saved_length

        length = saved_length(state, len(self.keys), self.context)
        row = self._row_of[slot]
        for cache, saved in zip((*self.keys, *self.values), state, strict=True):
            cache[row, :, :length] = saved.to("cpu").float().numpy()
        self._length[slot] = length
        return length


MAX_STACKS = 4
"""Adapter sets whose stacked weights are kept (a steady batch reuses one)."""


class _Binding:
    """A session's IO binding of one range of cache rows, and the LoRA stacks bound in it."""

    def __init__(self, session: Any, binding: Any):
        self.session, self.binding = session, binding
        self.stacks: _Stacks | None = None
        self.inputs: list[np.ndarray] = []


MAX_ENTRIES = 64
"""Adapter sets whose (for an int8 graph, quantized) weights are kept between stackings."""


class _Entry:
    """An adapter set's weights for the LoRA graph, per layer and group
    (`gateway_onnx.graph.LORA_GROUPS`): A `[in, rank]` with the adapters side by side,
    B `[rank, out]` times each adapter's scale; for an int8 graph, both as int8 codes with
    per-column scales. A group an adapter does not touch is zeros in its columns; an
    adapter's width is its largest rank."""

    def __init__(self, adapters: AdapterSet, shape: Shape, integer: bool):
        from gateway_onnx.graph import LORA_GROUPS, lora_dims, quantize_columns

        self.adapters = adapters  # kept alive: the caches' keys are their ids
        widths = [_width(weights, shape.layers) for weights, _ in adapters]
        self.rank = max(1, sum(widths))
        self.layers: list[dict[str, list[np.ndarray]]] = []
        for layer in range(shape.layers):
            groups = {}
            for group in LORA_GROUPS:
                size_in, size_out = lora_dims(shape, group)
                a = np.zeros((size_in, self.rank), np.float32)
                b = np.zeros((self.rank, size_out), np.float32)
                start = 0
                for (weights, factor), width in zip(adapters, widths, strict=True):
                    part = weights.layers[layer].get(group)
                    if part is not None:
                        r = part.a.shape[1]
                        a[:, start : start + r] = part.a.float().cpu().numpy()
                        b[start : start + r] = part.b.float().cpu().numpy() * factor
                    start += width
                if integer:
                    groups[group] = [*quantize_columns(a), *quantize_columns(b)]
                else:
                    groups[group] = [a, b]
            self.layers.append(groups)


class _Stacks:
    """The entries of a run stacked for the graph's inputs (`[entries, in, rank]` A,
    `[entries, rank, out]` B, and their `[entries, 1, columns]` scales for an int8 graph),
    each entry zero-padded to the widest entry's rank."""

    def __init__(self, key: tuple[Any, ...], entries: list[_Entry], integer: bool):
        from gateway_onnx.graph import LORA_GROUPS, lora_names, lora_scale_names

        self.key = key
        rank = max(entry.rank for entry in entries)
        self.arrays: dict[str, np.ndarray] = {}
        for layer in range(len(entries[0].layers)):
            for group in LORA_GROUPS:
                parts = [entry.layers[layer][group] for entry in entries]
                a_name, b_name = lora_names(layer, group)
                self.arrays[a_name] = _padded([p[0] for p in parts], rank, axis=2)
                if integer:
                    a_scale, b_scale = lora_scale_names(layer, group)
                    self.arrays[a_scale] = _padded([p[1][None] for p in parts], rank, axis=2)
                    self.arrays[b_name] = _padded([p[2] for p in parts], rank, axis=1)
                    self.arrays[b_scale] = np.stack([p[3][None] for p in parts])
                else:
                    self.arrays[b_name] = _padded([p[1] for p in parts], rank, axis=1)


def _padded(parts: list[np.ndarray], rank: int, axis: int) -> np.ndarray:
    """`parts` stacked along a new first axis, each zero-padded to `rank` along `axis`
    (counted in the stacked array)."""
    shape = list(parts[0].shape)
    shape[axis - 1] = rank
    stacked = np.zeros((len(parts), *shape), parts[0].dtype)
    for k, part in enumerate(parts):
        index: list[int | slice] = [k, slice(None), slice(None)]
        index[axis] = slice(0, part.shape[axis - 1])
        stacked[tuple(index)] = part
    return stacked


def _width(adapter: LoraWeights, layers: int) -> int:
    return max(
        (g.a.shape[1] for layer in adapter.layers[:layers] for g in layer.values()), default=0
    )
