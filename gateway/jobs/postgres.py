"""`PostgresJobStore`: jobs in PostgreSQL, shared by several gateway replicas and their
training workers (`database_url = "postgresql://..."`).

The same rules as the SQLite store, made safe for many processes on many machines: a
claim takes the oldest queued job with `FOR UPDATE SKIP LOCKED`, so two workers never
take the same one and neither waits on the other; every state change is one `UPDATE ...
WHERE state = ...`, so a claim, a cancel and a finish of the same job cannot both win;
submissions that count the queue take a transaction-scoped advisory lock.

The tables, their versioned schema and the connection pool are the gateway's database's
(`gateway.database.postgres`), which the Kobold stories and the recorded prompts share.
Needs `psycopg` and `psycopg-pool` (`pip install 'gateway[postgres]'`).
"""

from __future__ import annotations

import time
import uuid
from contextlib import AbstractContextManager
from typing import Any

from gateway.database.postgres import DatabaseUser, placeholders
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

SUBMIT_LOCK = 7_315_002
"""The advisory lock key held while counting the queue before a submission."""


class PostgresJobStore(DatabaseUser, SqlJobStore):
    shared = True

    def __init__(self, url: str):
        self.use_database(url)

    def _db(self) -> AbstractContextManager[Any]:
        return self.database.transaction()

    def _execute(self, db: Any, sql: str, args: tuple[Any, ...]) -> Any:
        return db.execute(placeholders(sql), args)

    def _job(self, row: dict[str, Any]) -> Job:
        fields = dict(row)
        fields["state"] = JobState(fields["state"])
        return Job(**fields)

    # Submitting and reading.

    def submit(self, job: NewJob, *, max_queued: int | None = None) -> Job:
        from psycopg.types.json import Jsonb

        job_id = job.id or str(uuid.uuid4())
        with self._db() as db:
            if max_queued is not None:
                db.execute("SELECT pg_advisory_xact_lock(%s)", (SUBMIT_LOCK,))
                row = db.execute(
                    "SELECT COUNT(*) AS queued FROM jobs WHERE state = 'queued'"
                ).fetchone()
                queued = int(row["queued"])
                if queued >= max_queued:
                    raise QueueFull(queued)
            db.execute(
                "INSERT INTO jobs (id, kind, model, state, output_name, config, data, created_at,"
                " tenant, info) VALUES (%s, %s, %s, 'queued', %s, %s, %s, %s, %s, %s)",
                (
                    job_id,
                    job.kind,
                    job.model,
                    job.output_name,
                    Jsonb(job.config),
                    Jsonb(job.data),
                    time.time(),
                    job.tenant,
                    Jsonb(job.info),
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
            where.append("state = ANY(%s)")
            args.append([s.value for s in sorted(states)])
        if kinds is not None:
            where.append("kind = ANY(%s)")
            args.append(sorted(kinds))
        if model is not None:
            where.append("model = %s")
            args.append(model)
        if tenant is not None:
            where.append("tenant = %s")
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
                "SELECT (SELECT COUNT(*) FROM jobs o WHERE o.state = 'queued'"
                " AND o.model = j.model AND o.seq < j.seq) AS ahead FROM jobs j"
                " WHERE j.id = %s AND j.state = 'queued'",
                (job_id,),
            ).fetchone()
        return None if row is None else int(row["ahead"]) + 1

    # The worker's side.

    def claim(self, model: str, worker: str, kinds: frozenset[str]) -> Job | None:
        now = time.time()
        with self._db() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'running', worker = %s, started_at = %s,"
                " heartbeat_at = %s WHERE id = (SELECT id FROM jobs WHERE state = 'queued'"
                " AND model = %s AND kind = ANY(%s) ORDER BY seq LIMIT 1"
                " FOR UPDATE SKIP LOCKED) RETURNING id",
                (worker, now, now, model, sorted(kinds)),
            ).fetchone()
            return None if row is None else self._get(db, row["id"], with_data=True)

    def record_step(self, job_id: str, metrics: StepMetrics, total_steps: int) -> bool:
        with self._db() as db:
            updated = db.execute(
                "UPDATE jobs SET step = %s, total_steps = %s, epoch = %s, loss = %s,"
                " learning_rate = %s, heartbeat_at = %s WHERE id = %s AND state = 'running'"
                " AND NOT stop_requested",
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
                "INSERT INTO job_metrics (job_id, step, epoch, loss, learning_rate, time)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
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
        from psycopg.types.json import Jsonb

        with self._db() as db:
            row = db.execute(
                "SELECT info, stop_requested FROM jobs WHERE id = %s AND state = 'running'"
                " FOR UPDATE",
                (job_id,),
            ).fetchone()
            if row is None:
                return False
            merged = merge_info(row["info"], info)
            db.execute(
                "UPDATE jobs SET info = %s, cost = cost + %s WHERE id = %s",
                (Jsonb(merged), add_cost, job_id),
            )
            return not row["stop_requested"]

    def log(self, job_id: str, message: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO job_logs (job_id, time, message) VALUES (%s, %s, %s)",
                (job_id, time.time(), message),
            )

    def metrics(self, job_id: str, limit: int | None = None) -> list[StepMetrics]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM (SELECT step, epoch, loss, learning_rate, time, id FROM job_metrics"
                " WHERE job_id = %s ORDER BY step DESC, id DESC LIMIT %s) last ORDER BY step, id",
                (job_id, limit),
            ).fetchall()
        return [
            StepMetrics(
                step=r["step"],
                epoch=r["epoch"],
                loss=r["loss"],
                learning_rate=r["learning_rate"],
                time=r["time"],
            )
            for r in rows
        ]

    def logs(self, job_id: str, limit: int | None = None) -> list[LogLine]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM (SELECT id, time, message FROM job_logs WHERE job_id = %s"
                " ORDER BY id DESC LIMIT %s) last ORDER BY id",
                (job_id, limit),
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
        sql = "SELECT id, step, total_steps FROM jobs WHERE state = 'running'"
        args: tuple[Any, ...] = ()
        if worker is not None:
            sql, args = sql + " AND worker = %s", (worker,)
        if stale_after is not None:
            sql += " AND COALESCE(heartbeat_at, started_at, 0) < %s"
            args = (*args, time.time() - stale_after)
        with self._db() as db:
            failed = []
            for row in db.execute(sql + " FOR UPDATE SKIP LOCKED", args).fetchall():
                text = message.format(step=row["step"], total=row["total_steps"] or "?")
                if db.execute(
                    "UPDATE jobs SET state = 'failed', finished_at = %s, error = %s,"
                    " webhook = %s WHERE id = %s AND state = 'running'",
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
        from psycopg.types.json import Jsonb

        if not kinds:
            return []
        sql = "SELECT id, info FROM jobs WHERE state = 'running' AND kind = ANY(%s)"
        args: list[Any] = [sorted(kinds)]
        if worker is not None:
            sql, args = sql + " AND worker = %s", [*args, worker]
        if stale_after is not None:
            sql += " AND COALESCE(heartbeat_at, started_at, 0) < %s"
            args.append(time.time() - stale_after)
        with self._db() as db:
            requeued = []
            for row in db.execute(sql + " FOR UPDATE SKIP LOCKED", args).fetchall():
                info = restarted(row["info"], max_restarts)
                if info is None:
                    continue
                db.execute(
                    "UPDATE jobs SET state = 'queued', worker = NULL, stop_requested = FALSE,"
                    " info = %s WHERE id = %s AND state = 'running'",
                    (Jsonb(info), row["id"]),
                )
                requeued.append(self._one(db, row["id"]))
            return requeued
