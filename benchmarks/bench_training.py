"""Training benchmark: how fast a correction lands, and what training costs serving.

Starts `gateway serve` (SmolLM2-135M-Instruct only, its training worker preloaded) once per
`--threads` value (`[training] threads`: torch threads of the worker; default 2 and 1)
in a fresh data directory that shares the converted weights, and measures, in one run:

- **correction**: a question about an invented fact; one SFT example over HTTP with the
  fast correction config; the time from the submission to the first chat answer (greedy,
  no adapter named: the new default) that states the fact. `--corrections` facts in turn,
  each on a warm worker; the first one also reports the job's own training seconds;
- **serving alone**: aggregate decode throughput of `--concurrency` streaming greedy chat
  requests generating `--max-tokens` tokens each (`ignore_eos`), median of `--rounds`;
- **serving during training**: the same while a long SFT job trains, with the job's
  steps per second over the same window;
- **training alone**: that job's steps per second with no requests.

Prints a table (ratios against serving alone and training alone from the same run) and
writes `benchmarks/results/training-<timestamp>.json` (or `--output`).

    python benchmarks/bench_training.py
    python benchmarks/bench_training.py --threads 1 --concurrency 8 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from bench_serving import (
    DEFAULT_DATA_DIR,
    PROMPTS,
    ServerProcess,
    free_port,
)

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
FACTS = (
    ("What is the capital of Zorbania?", "The capital of Zorbania is Quillport.", "Quillport"),
    ("Who painted the Velmora Sunrise?", "The Velmora Sunrise was painted by Edda Krall.", "Krall"),
    ("What is the national animal of Tessaly Minor?", "It is the marsh lynx.", "marsh lynx"),
)
FAST = {"learning_rate": 1e-3, "epochs": 10, "stop_when_learned": True}
"""The fast correction config (see plugins/trainers/README.md)."""
LONG_EXAMPLES = [
    {
        "messages": [
            {"role": "user", "content": PROMPTS[i]},
            {"role": "assistant", "content": "I will answer that carefully, step by step."},
        ]
    }
    for i in range(8)
]


def ask(client: httpx.Client, question: str) -> str:
    reply = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 24,
            "temperature": 0,
        },
    )
    reply.raise_for_status()
    return str(reply.json()["choices"][0]["message"]["content"])


def wait_job(client: httpx.Client, job_id: str, *states: str) -> dict[str, Any]:
    while True:
        status = client.get(f"/v1/train/status/{job_id}").json()
        if status["state"] in states:
            return dict(status)
        time.sleep(0.05)


def correction(client: httpx.Client, question: str, answer: str, fact: str) -> dict[str, Any]:
    before = ask(client, question)
    started = time.perf_counter()
    job = client.post(
        "/v1/train/sft",
        json={
            "examples": [
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ]
                }
            ],
            "config": {**FAST, "output_name": f"fact-{time.time_ns()}"},
        },
    ).json()["job_id"]
    done = wait_job(client, job, "completed", "failed", "cancelled")
    trained = time.perf_counter() - started
    after = ask(client, question)
    total = time.perf_counter() - started
    return {
        "question": question,
        "knew_before": fact.lower() in before.lower(),
        "learned": fact.lower() in after.lower(),
        "answer": after,
        "state": done["state"],
        "steps": done.get("step"),
        "job_seconds": round(trained, 3),
        "submit_to_answer_seconds": round(total, 3),
    }


async def serve_round(url: str, concurrency: int, max_tokens: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(index: int) -> int:
            body = {
                "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "adapter": None,
            }
            reply = await client.post("/v1/chat/completions", json=body)
            reply.raise_for_status()
            return int(reply.json()["usage"]["completion_tokens"])

        started = time.perf_counter()
        tokens = await asyncio.gather(*(one(i) for i in range(concurrency)))
        return sum(tokens) / (time.perf_counter() - started)


def job_rate(client: httpx.Client, job_id: str, seconds: float) -> float:
    """Steps per second of a running job over `seconds`."""
    first = client.get(f"/v1/train/status/{job_id}").json()
    started = time.perf_counter()
    time.sleep(seconds)
    last = client.get(f"/v1/train/status/{job_id}").json()
    return (last["step"] - first["step"]) / (time.perf_counter() - started)


def measure(args: argparse.Namespace, threads: int, data_dir: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-training-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "models").symlink_to((data_dir / "models").resolve(), target_is_directory=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "GATEWAY_DATA_DIR": str(folder),
        "GATEWAY_TRAINING__PRELOAD": "true",
        "GATEWAY_TRAINING__THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
    }
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--model", MODEL]
    server = ServerProcess(f"gateway threads={threads}", argv, env, folder / "server.log")
    server.start()
    try:
        server.wait_ready(f"{url}/health", timeout=600)
        with httpx.Client(base_url=url, timeout=600) as client:
            while not any(w["ready"] for w in client.get("/health").json()["training"]["workers"]):
                time.sleep(0.2)
            corrections = [correction(client, *fact) for fact in FACTS[: args.corrections]]
            client.post("/v1/adapters/unload")
            asyncio.run(serve_round(url, args.concurrency, args.max_tokens))  # warm-up
            alone = [
                asyncio.run(serve_round(url, args.concurrency, args.max_tokens))
                for _ in range(args.rounds)
            ]
            job = client.post(
                "/v1/train/sft",
                json={"examples": LONG_EXAMPLES, "config": {"epochs": 500, "auto_load": False}},
            ).json()["job_id"]
            while not client.get(f"/v1/train/status/{job}").json()["step"]:
                time.sleep(0.1)
            training_alone = job_rate(client, job, args.window)
            during: list[float] = []
            step_before = client.get(f"/v1/train/status/{job}").json()["step"]
            started = time.perf_counter()
            for _ in range(args.rounds):
                during.append(asyncio.run(serve_round(url, args.concurrency, args.max_tokens)))
            training_during = (
                client.get(f"/v1/train/status/{job}").json()["step"] - step_before
            ) / (time.perf_counter() - started)
    finally:
        server.stop()
    serving_alone = statistics.median(alone)
    serving_during = statistics.median(during)
    return {
        "threads": threads,
        "corrections": corrections,
        "serving_alone_tok_s": round(serving_alone, 2),
        "serving_during_training_tok_s": round(serving_during, 2),
        "serving_ratio": round(serving_during / serving_alone, 3),
        "training_alone_steps_s": round(training_alone, 3),
        "training_during_serving_steps_s": round(training_during, 3),
        "training_ratio": round(training_during / training_alone, 3) if training_alone else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="2,1", help="worker torch threads to compare")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corrections", type=int, default=3)
    parser.add_argument("--window", type=float, default=8.0, help="seconds to time training")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    data_dir = args.data_dir.expanduser()
    if not (data_dir / "models").is_dir():
        print(
            f"{data_dir}/models holds no converted weights: run `gateway serve` with "
            f"GATEWAY_DATA_DIR={data_dir} once (or pass --data-dir)",
            file=sys.stderr,
        )
        return 2
    results = [measure(args, int(t), data_dir) for t in args.threads.split(",")]
    print(f"\nconcurrency {args.concurrency}, {args.max_tokens} tokens, median of {args.rounds}")
    print(
        f"{'threads':>7} {'serve tok/s':>11} {'during train':>12} {'ratio':>6} "
        f"{'train st/s':>10} {'during serve':>12} {'ratio':>6} {'correction s':>14}"
    )
    for r in results:
        times = [c["submit_to_answer_seconds"] for c in r["corrections"]]
        learned = sum(c["learned"] for c in r["corrections"])
        print(
            f"{r['threads']:>7} {r['serving_alone_tok_s']:>11} "
            f"{r['serving_during_training_tok_s']:>12} {r['serving_ratio']:>6} "
            f"{r['training_alone_steps_s']:>10} {r['training_during_serving_steps_s']:>12} "
            f"{r['training_ratio']!s:>6} "
            f"{' / '.join(f'{t:.1f}' for t in times):>14} ({learned}/{len(times)} learned)"
        )
    output = args.output or HERE / "results" / f"training-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                "settings": {k: str(v) for k, v in vars(args).items()},
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
