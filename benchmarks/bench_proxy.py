#!/usr/bin/env python3
"""Proxy overhead of the teacher backend: the latency the gateway adds in front of a fast
upstream, and its requests/s, against a direct call and LiteLLM's proxy, in one run.

    python benchmarks/bench_proxy.py                           # direct and the gateway
    python benchmarks/bench_proxy.py --litellm /path/to/litellm  # and LiteLLM's proxy

The upstream is a minimal asyncio HTTP/1.1 server (its own process) answering every
chat completion with a canned one: JSON, or server-sent events when `stream` is true.
The gateway serves a teacher model pointing at it; LiteLLM's proxy (when its command is
given) serves the same upstream as an `openai/` model. Each gets the same non-streamed
`POST /v1/chat/completions` from a small keep-alive HTTP client of this script:

- sequential: one connection, `--requests` requests one after another; p50 and p99
  latency, and what each proxy adds over the direct call at the same percentile;
- throughput: `--concurrency` connections sending for `--seconds`; requests/s.

Prints a table and writes JSON (`--out`). LiteLLM is never a dependency of the project:
install it in a virtual environment of its own and give its `litellm` command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CANNED = "Hello! How can I help you today?"
BODY = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


# ---- the upstream ---------------------------------------------------------------------------


def _canned(stream: bool) -> tuple[bytes, bytes]:
    """The content type and body of the upstream's answer."""
    base = {"id": "chatcmpl-bench", "created": 1, "model": "m"}
    usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    if not stream:
        body = {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CANNED},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        return b"application/json", json.dumps(body).encode()
    chunk = {**base, "object": "chat.completion.chunk"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": CANNED}}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": usage},
    ]
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return b"text/event-stream", sse.encode()


async def _serve_upstream(port: int) -> None:
    answers = {flag: _canned(flag) for flag in (False, True)}
    responses = {
        flag: b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
        % (kind, len(body), body)
        for flag, (kind, body) in answers.items()
    }

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                stream = b'"stream":true' in body.replace(b" ", b"")
                writer.write(responses[stream])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---- a keep-alive client ----------------------------------------------------------------------


class Connection:
    """One HTTP/1.1 keep-alive connection sending the same prepared request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length, chunked = None, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            return status, await self.reader.readexactly(length or 0)
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self.reader.readexactly(size + 2))
            if size == 0:
                return status, b"".join(p[:-2] for p in parts)

    def close(self) -> None:
        self.writer.close()


def prepared(port: int, model: str, key: str | None) -> bytes:
    body = json.dumps({"model": model, **BODY}).encode()
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\n{auth}content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def check(status: int, body: bytes, name: str) -> None:
    if status != 200:
        raise RuntimeError(f"{name} answered {status}: {body[:500]!r}")
    content = json.loads(body)["choices"][0]["message"]["content"]
    if content != CANNED:
        raise RuntimeError(f"{name} answered {content!r}, not the upstream's {CANNED!r}")


async def sequential(port: int, request: bytes, count: int, name: str) -> list[float]:
    """Latencies in milliseconds of `count` requests, one at a time on one connection."""
    connection = await Connection.open(port)
    try:
        for _ in range(100):  # until its models are ready
            status, body = await connection.send(request)
            if status != 503:
                break
            await asyncio.sleep(0.2)
        check(status, body, name)
        for _ in range(min(count // 5, 200)):  # warm-up
            await connection.send(request)
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            status, body = await connection.send(request)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"{name} answered {status}: {body[:300]!r}")
        return latencies
    finally:
        connection.close()


async def throughput(port: int, request: bytes, concurrency: int, seconds: float) -> float:
    """Requests per second with `concurrency` connections sending for `seconds`."""
    connections = [await Connection.open(port) for _ in range(concurrency)]
    done = 0
    failures: list[int] = []

    async def worker(connection: Connection, until: float) -> None:
        nonlocal done
        while time.perf_counter() < until:
            status, _ = await connection.send(request)
            done += 1
            if status != 200:
                failures.append(status)

    try:
        await asyncio.gather(*(worker(c, time.perf_counter() + 1.0) for c in connections))
        done = 0
        started = time.perf_counter()
        await asyncio.gather(*(worker(c, started + seconds) for c in connections))
        elapsed = time.perf_counter() - started
    finally:
        for connection in connections:
            connection.close()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed (statuses {sorted(set(failures))})")
    return done / elapsed


async def client_libraries(port: int, concurrency: int, seconds: float) -> dict[str, Any]:
    """Streamed requests/s of httpx and aiohttp (the teacher's client) against the upstream
    itself, one at a time and `concurrency` at once: why the teacher uses aiohttp."""
    import aiohttp
    import httpx

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = json.dumps({"model": "m", "stream": True, **BODY}).encode()
    headers = {"content-type": "application/json"}
    limit = max(concurrency, 1)
    results: dict[str, Any] = {}
    async with (
        httpx.AsyncClient(limits=httpx.Limits(max_connections=limit), timeout=None) as hx,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as aio,
    ):

        async def with_httpx() -> None:
            async with hx.stream("POST", url, content=body, headers=headers) as reply:
                async for _ in reply.aiter_bytes():
                    pass

        async def with_aiohttp() -> None:
            async with aio.post(url, data=body, headers=headers) as reply:
                async for _ in reply.content.iter_any():
                    pass

        for name, call in (("httpx", with_httpx), ("aiohttp", with_aiohttp)):
            for level in (1, concurrency):
                count = 0

                async def worker(until: float) -> None:
                    nonlocal count
                    while time.perf_counter() < until:
                        await call()  # noqa: B023 - `call` is fixed during the level
                        count += 1

                await asyncio.gather(*(worker(time.perf_counter() + 0.5) for _ in range(level)))
                count, started = 0, time.perf_counter()
                await asyncio.gather(*(worker(started + seconds) for _ in range(level)))
                results[f"{name} c={level}"] = count / (time.perf_counter() - started)
    return results


# ---- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"not listening after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def start(command: list[str], port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    process = subprocess.Popen(
        command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=ROOT
    )
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def gateway_command(folder: Path, upstream: int, port: int) -> tuple[list[str], dict[str, str]]:
    config = folder / "gateway.toml"
    config.write_text(
        f"""
[[models]]
name = "teacher"
backend = "teacher"
source = "fast/m"

[teacher.providers.fast]
base_url = "http://127.0.0.1:{upstream}/v1"
"""
    )
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
    command += ["--port", str(port)]
    env = {"GATEWAY_DATA_DIR": str(folder / "data"), "GATEWAY_LOG_LEVEL": "warning"}
    return command, env


def litellm_command(
    folder: Path, litellm: str, upstream: int, port: int
) -> tuple[list[str], dict[str, str]]:
    config = folder / "litellm.yaml"
    config.write_text(
        f"""model_list:
  - model_name: teacher
    litellm_params:
      model: openai/m
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: not-needed
litellm_settings:
  telemetry: false
"""
    )
    command = [litellm, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"]
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of its price table
        "LITELLM_LOG": "ERROR",
        # No API keys on either proxy: the same work per request (a local benchmark only).
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    return command, env


# ---- the run ------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    added_p50_ms: float = 0.0
    added_p99_ms: float = 0.0
    requests_per_s: float = 0.0
    skipped: str = ""
    latencies_ms: list[float] = field(default_factory=list, repr=False)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def measure(name: str, port: int, model: str, args: argparse.Namespace) -> Row:
    request = prepared(port, model, None)
    latencies = await sequential(port, request, args.requests, name)
    rps = await throughput(port, request, args.concurrency, args.seconds)
    return Row(
        name=name,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        mean_ms=statistics.fmean(latencies),
        requests_per_s=rps,
        latencies_ms=latencies,
    )


def table(rows: list[Row], args: argparse.Namespace) -> str:
    litellm = next((r for r in rows if r.name == "litellm" and not r.skipped), None)
    lines = [
        f"| target | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s (c={args.concurrency}) "
        "| req/s vs LiteLLM |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row.skipped:
            lines.append(f"| {row.name} | {row.skipped} | | | | | |")
            continue
        ratio = f"x{row.requests_per_s / litellm.requests_per_s:.2f}" if litellm else "-"
        added = row.name != "direct"
        lines.append(
            f"| {row.name} | {row.p50_ms:.3f} | {row.p99_ms:.3f} | "
            f"{f'{row.added_p50_ms:+.3f}' if added else '-'} | "
            f"{f'{row.added_p99_ms:+.3f}' if added else '-'} | {row.requests_per_s:,.0f} | "
            f"{ratio} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, folder: Path) -> list[Row]:
    processes: list[subprocess.Popen[bytes]] = []
    rows: list[Row] = []
    try:
        up = free_port()
        command = [sys.executable, __file__, "--serve-upstream", str(up)]
        processes.append(start(command, up, folder / "upstream.log", {}))
        wait_ready(up, processes[-1], folder / "upstream.log", 30)
        targets: list[tuple[str, int, str]] = [("direct", up, "m")]
        gw = free_port()
        command, env = gateway_command(folder, up, gw)
        processes.append(start(command, gw, folder / "gateway.log", env))
        wait_ready(gw, processes[-1], folder / "gateway.log", args.start_timeout)
        targets.append(("gateway", gw, "teacher"))
        if args.litellm:
            lp = free_port()
            command, env = litellm_command(folder, args.litellm, up, lp)
            processes.append(start(command, lp, folder / "litellm.log", env))
            wait_ready(lp, processes[-1], folder / "litellm.log", args.start_timeout)
            targets.append(("litellm", lp, "teacher"))
        for name, port, model in targets:
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            rows.append(await measure(name, port, model, args))
        if args.clients:
            print("measuring the HTTP clients ...", file=sys.stderr, flush=True)
            args.client_results = await client_libraries(up, args.concurrency, args.seconds)
        if not args.litellm:
            rows.append(Row(name="litellm", skipped="skipped (give --litellm COMMAND)"))
    finally:
        for process in reversed(processes):
            stop(process)
    direct = rows[0]
    for row in rows[1:]:
        if not row.skipped:
            row.added_p50_ms = row.p50_ms - direct.p50_ms
            row.added_p99_ms = row.p99_ms - direct.p99_ms
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests")
    parser.add_argument("--concurrency", type=int, default=32, help="connections for req/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the req/s run")
    parser.add_argument("--litellm", default=os.environ.get("LITELLM"), help="litellm command")
    parser.add_argument(
        "--clients", action="store_true", help="also compare httpx and aiohttp (req/s)"
    )
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "proxy.json")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        asyncio.run(_serve_upstream(args.serve_upstream))
        return 0
    if args.litellm is None:
        print("LiteLLM: not given (--litellm COMMAND or LITELLM=...): its row is skipped")
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as folder:
        rows = asyncio.run(run(args, Path(folder)))
    print(table(rows, args))
    clients = getattr(args, "client_results", None)
    if clients:
        print("\nstreamed req/s against the upstream alone:")
        for name, rate in clients.items():
            print(f"  {name:<14} {rate:>10,.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": sys.argv,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "python": sys.version.split()[0],
        "requests": args.requests,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rows": [asdict(r) | {"latencies_ms": None} for r in rows],
        "clients_req_per_s": getattr(args, "client_results", None),
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
