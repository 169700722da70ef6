"""Start-up time of `gateway serve`, cold (empty data directory: the GGUF is converted) and
warm (the converted cache is there), and single-request decode speed on the default model.

    python benchmarks/bench_startup.py [--data-dir DIR] [--out FILE.json]

Each run launches `gateway serve` on a free loopback port, polls `GET /health` until it
answers 200 (every default model ready), then asks for one greedy 128-token chat with
`ignore_eos` and reads the server's own `timings.predicted_per_second`. The cold run uses
a fresh temporary data directory unless `--data-dir` is given (then only warm runs).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(data_dir: Path, tokens: int) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        env={**os.environ, "GATEWAY_DATA_DIR": str(data_dir), "GATEWAY_LOG_LEVEL": "warning"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    accepting = None
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gateway serve exited with {process.returncode}")
            try:
                status = httpx.get(f"{url}/health", timeout=2).status_code
                accepting = accepting or time.perf_counter() - started
                if status == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        ready = time.perf_counter() - started
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a story about a dragon."}],
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600).json()
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "accepting_s": round(accepting or 0.0, 2),
        "ready_s": round(ready, 2),
        "decode_tok_s": round(reply["timings"]["predicted_per_second"], 1),
        "tokens": reply["timings"]["predicted_n"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="use this data directory (warm runs only)")
    parser.add_argument("--warm-runs", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="gateway-startup-") as fresh:
        data_dir = args.data_dir or Path(fresh)
        if args.data_dir is None:
            rows.append(("cold", run(data_dir, args.tokens)))
        rows += [(f"warm {i + 1}", run(data_dir, args.tokens)) for i in range(args.warm_runs)]
    print(f"{'run':<8} {'accepting (s)':>14} {'ready (s)':>10} {'decode tok/s':>13}")
    for name, row in rows:
        print(f"{name:<8} {row['accepting_s']:>14} {row['ready_s']:>10} {row['decode_tok_s']:>13}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": dict(rows), "argv": sys.argv}, indent=2))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
