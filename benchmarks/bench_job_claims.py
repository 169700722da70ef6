#!/usr/bin/env python3
"""How fast workers claim jobs, in one run: the SQLite job store (the default, one file)
against the PostgreSQL one (`database_url`, for replicas), each with 1, 2 and 4 worker
processes racing to claim and finish `--jobs` queued jobs. The PostgreSQL server is a
fresh local cluster (Debian's `postgresql`, as the tests start it; fsync off, as there).

Each cell is jobs claimed and finished per second (the median of `--rounds`), and its
ratio to SQLite with one worker. Every job must be claimed exactly once: the run checks it.

    python benchmarks/bench_job_claims.py
    python benchmarks/bench_job_claims.py --jobs 2000 --rounds 5

Writes JSON to `benchmarks/results/job-claims-<timestamp>.json` (or `--output`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from gateway.jobs import JobState, NewJob  # noqa: E402
from gateway.jobs.open import open_job_store  # noqa: E402

KINDS = frozenset({"sft"})


def _worker(url: str, name: str, start: Any) -> list[str]:
    store = open_job_store(url)
    start.wait()
    claimed = []
    while (job := store.claim("m", name, KINDS)) is not None:
        store.finish(job.id, JobState.COMPLETED)
        claimed.append(job.id)
    store.close()
    return claimed


def measure(url: str, jobs: int, workers: int) -> float:
    store = open_job_store(url)
    ids = {store.submit(NewJob(kind="sft", model="m", output_name=f"o{i}")).id for i in range(jobs)}
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Barrier(workers + 1)
        with context.Pool(workers) as pool:
            pending = [pool.apply_async(_worker, (url, f"w{i}", start)) for i in range(workers)]
            start.wait()
            began = time.perf_counter()
            results = [result.get(timeout=600) for result in pending]
            elapsed = time.perf_counter() - began
    claimed = [job_id for part in results for job_id in part]
    assert len(claimed) == len(set(claimed)) and set(claimed) == ids, "a job was claimed twice"
    store.close()
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    from pg_server import PostgresServer, binaries

    found = binaries()
    if found is None:
        sys.exit("PostgreSQL is not installed: python3 dev.py system-deps")
    server = PostgresServer(found).start()
    rows: list[dict[str, Any]] = []
    try:
        for store in ("sqlite", "postgresql"):
            for workers in (1, 2, 4):
                rates = []
                for round_ in range(args.rounds):
                    key = f"{store}-{workers}-{round_}"
                    if store == "sqlite":
                        folder = tempfile.mkdtemp(prefix="bench-claims-")
                        url = f"sqlite:///{folder}/gateway.db"
                    else:
                        url = server.database_for(key)
                    rates.append(measure(url, args.jobs, workers))
                rows.append(
                    {"store": store, "workers": workers, "jobs_per_s": statistics.median(rates)}
                )
    finally:
        server.stop()
    base = rows[0]["jobs_per_s"]
    print(f"{'store':<12}{'workers':>8}{'jobs/s':>10}{'ratio':>8}")
    for row in rows:
        row["ratio"] = row["jobs_per_s"] / base
        print(
            f"{row['store']:<12}{row['workers']:>8}{row['jobs_per_s']:>10.0f}{row['ratio']:>8.2f}"
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or HERE / "results" / f"job-claims-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "jobs": args.jobs,
                "rounds": args.rounds,
                "machine": platform.platform(),
                "cpus": multiprocessing.cpu_count(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
