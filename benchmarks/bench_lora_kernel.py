"""An experimental C++ LoRA kernel against the engine's torch operations, alone and in a step.

The torch engine computes a step's LoRA deltas with two torch operations per projection
group (`gateway_engine.lora.batch`: a `bmm` shrink and a `baddbmm_` expand over stacked
adapters, B block-diagonal over q/k/v and gate/up). `lora_kernel/sgmv.cpp` does it in one
operation per group, reads no block-diagonal zeros, and can read the adapters as bfloat16
(half the bytes). This benchmark builds it for this machine (a C++ compiler and ninja are
needed) and times, on the default model's shapes (SmolLM2-135M: 30 layers, hidden 576,
q 576, k/v 192, MLP 1536) with 16 rows, each adapter owning 16 / K adjacent rows:

- `alone`: the 120 LoRA group deltas of one step, nothing else;
- `in a step`: each group's base matmul (`F.linear` of the model's shape) then its delta,
  against the base matmuls alone (the ratio is the step's rate with LoRA over without).

Cases run round-robin (each repetition times every case once) and report medians.

    python benchmarks/bench_lora_kernel.py
    python benchmarks/bench_lora_kernel.py --adapters 8 --ranks 16 --repeats 10

Writes `benchmarks/results/lora-kernel-<timestamp>.json` (or `--output`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway_torch.threads import tune_openmp

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "lora_kernel" / "sgmv.cpp"
LAYERS, HIDDEN, Q, KV, MLP = 30, 576, 576, 192, 1536
GROUPS = {"qkv": (HIDDEN, [Q, KV, KV]), "out": (Q, [HIDDEN]), "gate_up": (HIDDEN, [MLP, MLP]),
          "down": (MLP, [HIDDEN])}  # fmt: skip
"""Each projection group's input features and its members' output features."""
ROWS = 16


def build() -> None:
    """Compile `sgmv.cpp` for this CPU (cached by torch under its extensions directory)."""
    import hashlib

    from torch.utils.cpp_extension import load

    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    load(
        name=f"gateway_lora_bench_{digest}",
        sources=[str(SOURCE)],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],  # torch's own libgomp, already loaded: its threads
        is_python_module=False,
    )


def interleave(a_t, dtype):  # type: ignore[no-untyped-def]
    """A transposed (`[R, in]`) in the kernel's tiles: `[ceil(R/4), ceil(in/16), 4, 16]`."""
    import torch

    ranks, inputs = a_t.shape
    tiles, chunks = -(-ranks // 4), -(-inputs // 16)
    padded = torch.zeros((tiles * 4, chunks * 16), dtype=dtype)
    padded[:ranks, :inputs] = a_t
    return padded.view(tiles, 4, chunks, 16).permute(0, 2, 1, 3).contiguous()


class Setup:
    """K random rank-R adapters in the engine's fused layout, stacked as the engine stacks
    them, and packed for the kernel in float32 and bfloat16."""

    def __init__(self, adapters: int, rank: int):
        import torch

        gen = torch.Generator().manual_seed(adapters * 100 + rank)
        self.k, self.rank = adapters, rank
        fused = []  # per adapter, layer, group: (A [in, m*R], B block-diagonal, outputs)
        for _ in range(adapters):
            layers = []
            for _ in range(LAYERS):
                groups = {}
                for group, (inputs, outs) in GROUPS.items():
                    a = torch.randn((inputs, len(outs) * rank), generator=gen) * 0.02
                    b = torch.zeros((len(outs) * rank, sum(outs)))
                    column = 0
                    for i, out in enumerate(outs):
                        block = torch.randn((rank, out), generator=gen) * 0.02
                        b[i * rank : (i + 1) * rank, column : column + out] = block
                        column += out
                    groups[group] = (a, b, outs)
                layers.append(groups)
            fused.append(layers)
        self.stacks = [
            {
                g: (
                    torch.stack([fused[k][i][g][0] for k in range(adapters)]),
                    torch.stack([fused[k][i][g][1] for k in range(adapters)]),
                )
                for g in GROUPS
            }
            for i in range(LAYERS)
        ]
        self.packed = {
            dtype: [
                {g: self._pack([fused[k][i][g] for k in range(adapters)], dtype) for g in GROUPS}
                for i in range(LAYERS)
            ]
            for dtype in (torch.float32, torch.bfloat16)
        }
        self.x = {
            g: torch.randn((ROWS, inputs), generator=gen) for g, (inputs, _) in GROUPS.items()
        }
        self.base = [
            {g: torch.randn((sum(outs), inputs), generator=gen) * 0.02 for g, (inputs, outs) in GROUPS.items()}
            for _ in range(LAYERS)
        ]  # fmt: skip
        self.rows = torch.arange(ROWS)
        self.adapter = torch.arange(ROWS) * adapters // ROWS
        self.scale = torch.ones(ROWS)

    def _pack(self, adapters, dtype):  # type: ignore[no-untyped-def]
        import torch

        lists: tuple[list, list, list, list] = ([], [], [], [])
        for a, b, outs in adapters:
            rank = self.rank
            packed_b = torch.zeros((len(outs) * rank, max(outs)), dtype=dtype)
            col = torch.zeros(len(outs) * rank, dtype=torch.int32)
            width = torch.zeros(len(outs) * rank, dtype=torch.int32)
            column = 0
            for i, out in enumerate(outs):
                rows = slice(i * rank, (i + 1) * rank)
                packed_b[rows, :out] = b[rows, column : column + out]
                col[rows], width[rows] = column, out
                column += out
            for target, value in zip(
                lists, (interleave(a.T, dtype), packed_b, col, width), strict=True
            ):
                target.append(value)
        return lists

    def delta(self, how: str, layer: int, group: str, y) -> None:  # type: ignore[no-untyped-def]
        import torch

        x = self.x[group]
        if how == "torch":  # the engine's block path: views, no gathers
            a, b = self.stacks[layer][group]
            width = ROWS // self.k
            shrunk = torch.bmm(x.view(self.k, width, -1), a)
            y.view(self.k, width, -1).baddbmm_(shrunk, b)
            return
        dtype = torch.bfloat16 if how == "kernel bf16" else torch.float32
        a, b, col, width_ = self.packed[dtype][layer][group]
        torch.ops.gateway_lora.sgmv_(x, y, a, b, col, width_, self.rows, self.adapter, self.scale)

    def step(self, how: str | None, base: bool) -> None:
        import torch
        import torch.nn.functional as F

        for layer in range(LAYERS):
            for group, (_, outs) in GROUPS.items():
                if base:
                    y = F.linear(self.x[group], self.base[layer][group])
                else:
                    y = torch.zeros((ROWS, sum(outs)))
                if how is not None:
                    self.delta(how, layer, group, y)


HOWS = ("torch", "kernel fp32", "kernel bf16")


def _time(fn: Callable[[], None], steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--adapters", type=ints, default=[1, 8, 16])
    parser.add_argument("--ranks", type=ints, default=[8, 16])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    tune_openmp()  # as `gateway serve` does, before torch loads
    import torch

    build()
    setups = [Setup(k, r) for r in args.ranks for k in args.adapters if ROWS % k == 0]
    # correctness first: the kernel's delta against the engine's
    errors = {}
    for setup in setups:
        ref = torch.zeros((ROWS, Q + 2 * KV))
        setup.delta("torch", 0, "qkv", ref)
        for how in HOWS[1:]:
            got = torch.zeros_like(ref)
            setup.delta(how, 0, "qkv", got)
            errors[(setup.k, setup.rank, how)] = float((got - ref).abs().max() / ref.abs().max())
    cases = [("base", None, None, True)] + [
        (place, setup, how, place == "in a step")
        for setup in setups
        for how in HOWS
        for place in ("alone", "in a step")
    ]
    times: list[list[float]] = [[] for _ in cases]
    with torch.inference_mode():
        for _ in range(args.repeats + 1):  # the first repetition warms up, untimed
            for i, (_, setup, how, base) in enumerate(cases):
                run = (
                    (lambda s=setup, h=how, b=base: s.step(h, b))
                    if setup
                    else (lambda: setups[0].step(None, True))
                )
                times[i].append(_time(run, args.steps))
    base_ms = statistics.median(times[0][1:])
    rows = []
    print(f"base matmuls of a step: {base_ms:.1f} ms\n")
    print(
        f"{'adapters':>8} {'rank':>4} {'path':>12} {'alone ms':>9} {'step ms':>8} {'step rate':>9} {'max rel err':>11}"
    )
    for setup in setups:
        for how in HOWS:
            alone = next(
                i for i, c in enumerate(cases) if c[1] is setup and c[2] == how and c[0] == "alone"
            )
            step = alone + 1
            alone_ms, step_ms = (
                statistics.median(times[alone][1:]),
                statistics.median(times[step][1:]),
            )
            error = errors.get((setup.k, setup.rank, how), 0.0)
            rows.append({"adapters": setup.k, "rank": setup.rank, "path": how, "alone_ms": round(alone_ms, 2),
                         "step_ms": round(step_ms, 2), "step_rate": round(base_ms / step_ms, 3),
                         "max_relative_error": error})  # fmt: skip
            print(f"{setup.k:>8} {setup.rank:>4} {how:>12} {alone_ms:9.2f} {step_ms:8.2f} {base_ms / step_ms:9.2f} {error:11.1e}")  # fmt: skip
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or HERE / "results" / f"lora-kernel-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": platform.platform(), "threads": torch.get_num_threads(),
                                  "base_ms": round(base_ms, 2), "results": rows}, indent=2))  # fmt: skip
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
