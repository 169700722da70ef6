"""`SqliteJobStore`: jobs in SQLite (the data directory's `gateway.db` by default).

Each call opens its own connection, so the store may be shared by threads and used by
several processes at once (the server and its training workers); WAL mode lets readers go
on while a worker writes. State changes are single `UPDATE ... WHERE state = ?` statements,
so a claim, a cancel and a finish of the same job cannot both succeed.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from gateway.database.sqlite import SqliteFile
from gateway.jobs.sql import COLUMNS, SqlJobStore
from gateway.jobs.store import (
    Job,
    JobState,
    LogLine,
    NewJob,
    QueueFull,
    StepMetrics,
    merge_info,
    restarted,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    output_name TEXT NOT NULL,
    config TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    epoch REAL NOT NULL DEFAULT 0,
    loss REAL,
    learning_rate REAL,
    error TEXT,
    adapter_path TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    webhook TEXT,
    tenant TEXT,
    info TEXT NOT NULL DEFAULT '{}',
    cost REAL NOT NULL DEFAULT 0,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, model, seq);
CREATE TABLE IF NOT EXISTS job_metrics (
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL NOT NULL,
    loss REAL NOT NULL,
    learning_rate REAL NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS job_metrics_job ON job_metrics (job_id, step);
CREATE TABLE IF NOT EXISTS job_logs (
    job_id TEXT NOT NULL,
    time REAL NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs (job_id, time);
"""

_ADDED_COLUMNS = (
    ("tenant", "TEXT"),
    ("info", "TEXT NOT NULL DEFAULT '{}'"),
    ("cost", "REAL NOT NULL DEFAULT 0"),
    ("heartbeat_at", "REAL"),
)
"""Columns added after the first release: a database made before gets them on open."""


class SqliteJobStore(SqlJobStore):
    def __init__(self, path: Path):
        self.path = path
        self._file = SqliteFile(path, _prepare)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SqliteJobStore:
        return cls(data_dir / "gateway.db")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(self._file.connect()) as connection:
            connection.row_factory = sqlite3.Row
            with connection:
                yield connection

    def _execute(self, db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> Any:
        return db.execute(sql, args)

    def _job(self, row: sqlite3.Row) -> Job:
        fields = dict(row)
        fields["config"] = json.loads(fields["config"])
        fields["info"] = json.loads(fields["info"])
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
        fields["state"] = JobState(fields["state"])
        fields["stop_requested"] = bool(fields["stop_requested"])
        return Job(**fields)

    # Submitting and reading.

    def submit(self, job: NewJob, *, max_queued: int | None = None) -> Job:
        job_id = job.id or str(uuid.uuid4())
        with self._db() as db:
            # Count, number and insert under the write lock: two submitters must neither
            # both take the last place in the queue nor get the same `seq`.
            db.execute("BEGIN IMMEDIATE")
            if max_queued is not None:
                (queued,) = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE state = 'queued'"
                ).fetchone()
                if queued >= max_queued:
                    raise QueueFull(queued)
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()
            db.execute(
                "INSERT INTO jobs (id, seq, kind, model, state, output_name, config, data,"
                " created_at, tenant, info) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    seq,
                    job.kind,
                    job.model,
                    job.output_name,
                    json.dumps(job.config),
                    json.dumps(job.data),
                    time.time(),
                    job.tenant,
                    json.dumps(job.info),
                ),
            )
            return self._one(db, job_id)

    def find(
        self,
        *,
        states: frozenset[JobState] | None = None,
        kinds: frozenset[str] | None = None,
        model: str | None = None,
        tenant: str | None = None,
    ) -> list[Job]:
        where: list[str] = []
        args: list[Any] = []
        if states is not None:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(sorted(states))
        if kinds is not None:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(sorted(kinds))
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        sql = f"SELECT {COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._db() as db:
            rows = db.execute(sql + " ORDER BY seq", args).fetchall()
        return [self._job(row) for row in rows]

    def position(self, job_id: str) -> int | None:
        with self._db() as db:
            row = db.execute(
                "SELECT model, seq FROM jobs WHERE id = ? AND state = 'queued'", (job_id,)
            ).fetchone()
            if row is None:
                return None
            (ahead,) = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND model = ? AND seq < ?",
                (row["model"], row["seq"]),
            ).fetchone()
            return int(ahead) + 1

    # The worker's side.

    def claim(self, model: str, worker: str, kinds: frozenset[str]) -> Job | None:
        marks = ", ".join("?" * len(kinds))
        now = time.time()
        with self._db() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'running', worker = ?, started_at = ?, heartbeat_at = ?"
                " WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND model = ?"
                f" AND kind IN ({marks}) ORDER BY seq LIMIT 1) AND state = 'queued'"
                " RETURNING id",
                (worker, now, now, model, *sorted(kinds)),
            ).fetchone()
            return None if row is None else self._get(db, row["id"], with_data=True)

    def record_step(self, job_id: str, metrics: StepMetrics, total_steps: int) -> bool:
        with self._db() as db:
            updated = db.execute(
                "UPDATE jobs SET step = ?, total_steps = ?, epoch = ?, loss = ?,"
                " learning_rate = ?, heartbeat_at = ? WHERE id = ? AND state = 'running'"
                " AND stop_requested = 0",
                (
                    metrics.step,
                    total_steps,
                    metrics.epoch,
                    metrics.loss,
                    metrics.learning_rate,
                    time.time(),
                    job_id,
                ),
            ).rowcount
            if not updated:
                return False
            db.execute(
                "INSERT INTO job_metrics VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    metrics.step,
                    metrics.epoch,
                    metrics.loss,
                    metrics.learning_rate,
                    metrics.time,
                ),
            )
            return True

    def update(
        self, job_id: str, info: dict[str, Any] | None = None, *, add_cost: float = 0.0
    ) -> bool:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT info, stop_requested FROM jobs WHERE id = ? AND state = 'running'",
                (job_id,),
            ).fetchone()
            if row is None:
                return False
            merged = merge_info(json.loads(row["info"]), info)
            db.execute(
                "UPDATE jobs SET info = ?, cost = cost + ? WHERE id = ?",
                (json.dumps(merged), add_cost, job_id),
            )
            return not row["stop_requested"]

    def log(self, job_id: str, message: str) -> None:
        with self._db() as db:
            db.execute("INSERT INTO job_logs VALUES (?, ?, ?)", (job_id, time.time(), message))

    def metrics(self, job_id: str, limit: int | None = None) -> list[StepMetrics]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM (SELECT step, epoch, loss, learning_rate, time FROM job_metrics"
                " WHERE job_id = ? ORDER BY step DESC, rowid DESC LIMIT ?) ORDER BY step",
                (job_id, -1 if limit is None else limit),
            ).fetchall()
        return [StepMetrics(**dict(row)) for row in rows]

    def logs(self, job_id: str, limit: int | None = None) -> list[LogLine]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM (SELECT rowid, time, message FROM job_logs WHERE job_id = ?"
                " ORDER BY rowid DESC LIMIT ?) ORDER BY rowid",
                (job_id, -1 if limit is None else limit),
            ).fetchall()
        return [LogLine(time=row["time"], message=row["message"]) for row in rows]

    # Ending jobs.

    def fail_running(
        self,
        message: str,
        *,
        worker: str | None = None,
        webhook: bool = False,
        stale_after: float | None = None,
    ) -> list[Job]:
        with self._db() as db:
            sql = "SELECT id, step, total_steps FROM jobs WHERE state = 'running'"
            args: tuple[Any, ...] = ()
            if worker is not None:
                sql, args = sql + " AND worker = ?", (worker,)
            if stale_after is not None:
                sql += " AND COALESCE(heartbeat_at, started_at, 0) < ?"
                args = (*args, time.time() - stale_after)
            failed = []
            for row in db.execute(sql, args).fetchall():
                text = message.format(step=row["step"], total=row["total_steps"] or "?")
                if db.execute(
                    "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?, webhook = ?"
                    " WHERE id = ? AND state = 'running'",
                    (time.time(), text, "pending" if webhook else None, row["id"]),
                ).rowcount:
                    failed.append(self._one(db, row["id"]))
            return failed

    def requeue_running(
        self,
        kinds: frozenset[str],
        *,
        max_restarts: int,
        worker: str | None = None,
        stale_after: float | None = None,
    ) -> list[Job]:
        if not kinds:
            return []
        marks = ", ".join("?" * len(kinds))
        sql = f"SELECT id, info FROM jobs WHERE state = 'running' AND kind IN ({marks})"
        args: list[Any] = sorted(kinds)
        if worker is not None:
            sql, args = sql + " AND worker = ?", [*args, worker]
        if stale_after is not None:
            sql += " AND COALESCE(heartbeat_at, started_at, 0) < ?"
            args.append(time.time() - stale_after)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(sql, args).fetchall()
            requeued = []
            for row in rows:
                info = restarted(json.loads(row["info"]), max_restarts)
                if info is None:
                    continue
                db.execute(
                    "UPDATE jobs SET state = 'queued', worker = NULL, stop_requested = 0,"
                    " info = ? WHERE id = ? AND state = 'running'",
                    (json.dumps(info), row["id"]),
                )
                requeued.append(self._one(db, row["id"]))
            return requeued


def _prepare(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)
    _add_columns(db)


def _add_columns(db: sqlite3.Connection) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for name, declaration in _ADDED_COLUMNS:
        if name not in present:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
