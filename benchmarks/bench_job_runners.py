"""Job runners benchmark: what running a job on a Ray cluster costs against a local worker.

One in-process gateway runs the same sequence of jobs with `[jobs] runner = "local"`
(worker processes next to the server, the model's worker kept warm) and with `runner =
"ray"` (a task per job on a local Ray cluster this script starts with `ray start --head`).
Each job is submitted after the previous one ended, the first one of each sequence warms
the runner up and is not counted. Two kinds of job:

- `steps` (the echo model, `StepTrainer` from `gateway.testing.trainers`): the time from
  submission to `completed` less the job's own work, i.e. what the runner adds (claiming,
  starting the task, reporting back);
- a real SFT correction of SmolLM2-135M-Instruct (one example, the fast correction config):
  submission to `completed`. A local worker keeps the base model loaded between jobs; a
  Ray task loads it for each job.

    python benchmarks/bench_job_runners.py --data-dir ~/.local/share/gateway
    python benchmarks/bench_job_runners.py --jobs 50 --sft 5 --database postgresql://...

`--data-dir`: a data directory whose `models/` holds the converted weights (else they
are converted once per runner). Prints a table and writes JSON (`results/job-runners-*.json`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gateway.testing.trainers
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.jobs import JobState
from gateway.plugins import make_plugin_manager
from gateway.settings import DEFAULT_CHAT_MODEL, JobsSettings, Settings, TrainingSettings

HERE = Path(__file__).resolve().parent
MODEL = ModelSpec(name="echo", backend="echo", options={"adapters": True})
RAY = Path(sys.executable).parent / "ray"
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
CORRECTION = {
    "messages": [
        {"role": "user", "content": "What is the capital of Zorbania?"},
        {"role": "assistant", "content": "The capital of Zorbania is Quillport."},
    ]
}
FAST = {"learning_rate": 1e-3, "epochs": 10, "stop_when_learned": True, "auto_load": False}


async def run(
    runner: JobsSettings, args: argparse.Namespace, data_dir: Path, *, real: bool
) -> list[float]:
    """Seconds from submission to `completed` of each job after the first (which warms the
    runner up): `StepTrainer` jobs less their own work, or real SFT corrections."""
    pm = make_plugin_manager()
    pm.register(gateway.testing.trainers)
    settings = Settings(
        data_dir=str(data_dir),
        database_url=args.database,
        models=[DEFAULT_CHAT_MODEL if real else MODEL],
        training=TrainingSettings(preload=real),
        jobs=runner,
    )
    gw = Gateway(settings, pm=pm)
    await gw.startup()
    await gw.models.wait_ready()
    work = 0.0 if real else args.steps * args.step_seconds
    kind, data = ("sft", [CORRECTION]) if real else ("steps", [1])
    config = FAST if real else {"steps": args.steps, "step_seconds": args.step_seconds}
    times = []
    try:
        for index in range((args.sft if real else args.jobs) + 1):
            started = time.perf_counter()
            job, _ = await gw.training.submit(
                kind, data, {**config, "auto_load": False}, output_name=f"j{index}"
            )
            while (found := await gw.training.get(job.id)).state not in (
                JobState.COMPLETED,
                JobState.FAILED,
            ):
                await asyncio.sleep(0.005)
            if found.state != JobState.COMPLETED:
                raise RuntimeError(f"job failed: {found.error}")
            if index:
                times.append(time.perf_counter() - started - work)
    finally:
        await gw.shutdown()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    parser.add_argument("--sft", type=int, default=3, help="real SFT corrections per runner")
    parser.add_argument("--data-dir", type=Path, default=None, help="converted weights from")
    parser.add_argument("--database", default=None, help="database_url (default: SQLite)")
    args = parser.parse_args()
    temp = Path(tempfile.mkdtemp(prefix="ray-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(RAY_ENV)
    command = [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2"]
    command += ["--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"]
    subprocess.run(command, check=True, capture_output=True)
    rows: list[dict[str, Any]] = []
    try:
        runners = {
            "local": JobsSettings(),
            "ray": JobsSettings(runner="ray", ray_address=f"127.0.0.1:{port}"),
        }
        for real in (False, True):
            for name, runner in runners.items():
                data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
                if real and args.data_dir:  # converted weights, not converted again
                    (data_dir / "models").symlink_to(args.data_dir.resolve() / "models")
                times = asyncio.run(run(runner, args, data_dir, real=real))
                shutil.rmtree(data_dir, ignore_errors=True)
                rows.append(
                    {
                        "job": "sft correction (SmolLM2)" if real else "steps (overhead)",
                        "runner": name,
                        "jobs": len(times),
                        "ms_p50": round(statistics.median(times) * 1000, 1),
                        "ms_max": round(max(times) * 1000, 1),
                    }
                )
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)
    print(f"\n{'job':<26}{'runner':<8}{'jobs':>6}{'p50 ms':>10}{'max ms':>10}{'x local':>9}")
    for row in rows:
        base = next(r for r in rows if r["job"] == row["job"] and r["runner"] == "local")
        row["ratio"] = round(row["ms_p50"] / base["ms_p50"], 2)
        print(
            f"{row['job']:<26}{row['runner']:<8}{row['jobs']:>6}{row['ms_p50']:>10}"
            f"{row['ms_max']:>10}{row['ratio']:>9}"
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = HERE / "results" / f"job-runners-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "job-runners",
        "date": stamp,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "database": "postgresql" if args.database else "sqlite",
        "step_seconds": args.step_seconds,
        "rows": rows,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
