#!/usr/bin/env python3
"""What OpenTelemetry tracing costs a request, in one run: the gateway (uvicorn on a
loopback port, in this process) serving the echo model, with `[tracing] exporter = "none"`
(the default), the same with a client `traceparent` on every request (passed on, no
spans), and tracing on (every span built and exported, by a batch processor, to a
console exporter writing to /dev/null).

Each configuration gets `--requests` sequential non-streamed chat completions of
`--tokens` echoed tokens on one keep-alive connection (after a warm-up), in `--rounds`
interleaved rounds; the table gives the median latency per configuration and its ratio
to tracing off. It also times the part of the request path that tracing adds when off
(`Tracing.request` with no tracer and no `traceparent`) on its own.

    python benchmarks/bench_tracing.py
    python benchmarks/bench_tracing.py --requests 400 --rounds 5

Writes JSON to `benchmarks/results/tracing-<timestamp>.json` (or `--output`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
import timeit
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gateway.app import create_app  # noqa: E402
from gateway.engine import ModelSpec  # noqa: E402
from gateway.gateway import Gateway  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from gateway.tracing import Tracing  # noqa: E402

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CONFIGS = ("off", "off + client traceparent", "on (console to /dev/null)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(traced: bool, data_dir: Path) -> Iterator[str]:
    settings = Settings(models=[ModelSpec(name="echo", backend="echo")], data_dir=str(data_dir))
    gateway = Gateway(settings)
    if traced:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        sink = open(os.devnull, "w")  # noqa: SIM115 - closed below
        gateway.tracing = Tracing.with_exporter(ConsoleSpanExporter(out=sink), batch=True)
    config = uvicorn.Config(
        create_app(gateway=gateway), host="127.0.0.1", port=free_port(), log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    while not (server.started and gateway.models.all_ready):
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        if traced:
            sink.close()


def latencies(url: str, requests: int, tokens: int, headers: dict[str, str]) -> list[float]:
    body = {"model": "echo", "messages": [{"role": "user", "content": "x" * tokens}]}
    taken = []
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        for _ in range(20):
            client.post("/v1/chat/completions", json=body).raise_for_status()
        for _ in range(requests):
            started = time.perf_counter()
            client.post("/v1/chat/completions", json=body).raise_for_status()
            taken.append(time.perf_counter() - started)
    return taken


def off_path_seconds() -> float:
    """One `Tracing.request` with tracing off and no traceparent (per call)."""
    tracing = Tracing()
    headers: dict[str, str] = {"content-type": "application/json"}

    def once() -> None:
        with tracing.request("POST", "/v1/chat/completions", "openai", headers):
            pass

    number = 100_000
    return min(timeit.repeat(once, number=number, repeat=5)) / number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    import tempfile

    samples: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for name in CONFIGS:
                traced = name.startswith("on")
                headers = {"traceparent": TRACEPARENT} if "traceparent" in name else {}
                with serve(traced, Path(folder)) as url:
                    samples[name] += latencies(url, args.requests, args.tokens, headers)
    off = statistics.median(samples["off"])
    rows: list[dict[str, Any]] = []
    print(f"{args.rounds} rounds x {args.requests} sequential requests, {args.tokens} tokens each")
    print(f"{'tracing':<28} {'p50 ms':>8} {'p90 ms':>8} {'ratio':>6}")
    for name in CONFIGS:
        ordered = sorted(samples[name])
        p50, p90 = statistics.median(ordered), ordered[int(0.9 * len(ordered))]
        rows.append({"config": name, "p50_ms": p50 * 1e3, "p90_ms": p90 * 1e3, "ratio": p50 / off})
        print(f"{name:<28} {p50 * 1e3:8.3f} {p90 * 1e3:8.3f} {p50 / off:6.3f}")
    path_cost = off_path_seconds()
    print(f"tracing's request path when off: {path_cost * 1e6:.2f} us a request")
    result = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "requests": args.requests,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "rows": rows,
        "off_path_us": path_cost * 1e6,
    }
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = args.output or HERE / "results" / f"tracing-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
