"""The torch engine's sampling per decode step (`gateway_engine.sampling.sample`: top-k and
top-p by `topk`, the draw among the tokens left possible) against what it did before (both
filters by a sort of the whole vocabulary, the draw over the whole vocabulary), in one run:
llama.cpp's default sampling (`top_k` 40, `top_p` 0.95, `min_p` 0.05, `temperature` 0.8,
`repeat_penalty` 1.1 over 64 tokens) on SmolLM2's 49,152-token vocabulary, for batches of 1
to 32 rows. Every step checks that both leave exactly the same tokens possible and draw
from them; the table gives milliseconds per step and the speed-up.

    python benchmarks/bench_sampling.py [--steps 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from gateway_engine import sampling
from gateway_schemas.canonical import SamplingParams

VOCAB = 49152
LLAMA_DEFAULTS = SamplingParams(
    temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1, penalty_last_n=64
)


def sorted_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """The former top-k: the k-th largest logit found by sorting every row."""
    active = top_k > 0
    if not bool(active.any()):
        return logits
    k = top_k.clamp(min=1, max=logits.shape[-1]).to(torch.long)
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
    return logits.masked_fill((logits < kth) & active.unsqueeze(1), sampling.NEG_INF)


def sorted_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The former top-p: every row sorted over the whole vocabulary."""
    active = top_p < 1.0
    if not bool(active.any()):
        return logits
    values, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(values, dim=-1)
    remove_sorted = (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1)
    remove_sorted[:, 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(1, order, remove_sorted)
    return logits.masked_fill(remove & active.unsqueeze(1), sampling.NEG_INF)


@contextlib.contextmanager
def sorting_chain() -> Iterator[None]:
    saved = dict(sampling.STEPS)
    sampling.STEPS["top_k"] = sampling._column_step(sorted_top_k, "top_k")
    sampling.STEPS["top_p"] = sampling._column_step(sorted_top_p, "top_p")
    try:
        yield
    finally:
        sampling.STEPS.clear()
        sampling.STEPS.update(saved)


def former_sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    histories: list[list[int]],
    generators: list[torch.Generator],
) -> torch.Tensor:
    """The former `sample`: the sorting chain, then each row drawn over the vocabulary."""
    with sorting_chain():
        filtered = sampling.transform(logits, params, histories, generators)
    chosen = filtered.argmax(dim=-1)
    for row in range(len(params)):
        probs = torch.softmax(filtered[row], dim=-1)
        if bool(torch.isfinite(probs).all()) and float(probs.sum()) > 0.0:
            chosen[row] = torch.multinomial(probs, 1, generator=generators[row])[0]
    return chosen


def run(batch: int, steps: int) -> dict[str, float]:
    torch.manual_seed(batch)
    logits = [torch.randn(batch, VOCAB) * 3 for _ in range(steps)]
    histories = [[int(t) for t in torch.randint(0, VOCAB, (64,))] for _ in range(batch)]
    params = [LLAMA_DEFAULTS] * batch
    times: dict[str, list[float]] = {"topk": [], "sort": []}
    for step, row_logits in enumerate(logits):
        chosen = {}
        for name, function in (("sort", former_sample), ("topk", sampling.sample)):
            generators = [torch.Generator().manual_seed(step * 1000 + r) for r in range(batch)]
            started = time.perf_counter()
            chosen[name] = function(row_logits, params, histories, generators)
            times[name].append(time.perf_counter() - started)
        with sorting_chain():
            before = sampling.transform(row_logits, params, histories) > sampling.NEG_INF
        after = sampling.transform(row_logits, params, histories) > sampling.NEG_INF
        if not torch.equal(before, after):
            raise AssertionError(f"batch {batch}, step {step}: different tokens left possible")
        for name, tokens in chosen.items():
            if not bool(after.gather(1, tokens.unsqueeze(1)).all()):
                raise AssertionError(f"batch {batch}, step {step}: {name} drew a filtered token")
    sort_ms = statistics.median(times["sort"]) * 1000
    topk_ms = statistics.median(times["topk"]) * 1000
    return {"batch": batch, "sort_ms": sort_ms, "topk_ms": topk_ms, "speedup": sort_ms / topk_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,4,16,32")
    parser.add_argument("--out", default="benchmarks/results/sampling.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run(int(b), args.steps) for b in args.batches.split(",")]
    print("| rows | before ms/step | now ms/step | speed-up |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['batch']} | {row['sort_ms']:.2f} | {row['topk_ms']:.2f} "
            f"| x{row['speedup']:.2f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"threads": args.threads, "steps": args.steps, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
