"""`SqlJobStore`: the part of the job store that SQLite and PostgreSQL share.

The state changes that are one `UPDATE ... WHERE state = ...` in both dialects (finish,
cancel, stop, heartbeat, failing the queue, webhooks) and reading a job by id, written
once with `?` placeholders. A dialect gives its connections (`_db`), runs a statement
(`_execute`: SQLite as written, PostgreSQL with psycopg's placeholders) and turns a row
into a `Job` (`_job`); what differs between the dialects (claims, counting the queue,
JSON columns, row locks) stays in `gateway.jobs.sqlite` and `gateway.jobs.postgres`.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from contextlib import AbstractContextManager
from typing import Any

from gateway.jobs.store import TERMINAL_STATES, Job, JobState, JobStore

COLUMNS = (
    "id, kind, model, state, output_name, config, created_at, started_at, finished_at, step,"
    " total_steps, epoch, loss, learning_rate, error, adapter_path, stop_requested, worker,"
    " webhook, tenant, info, cost, heartbeat_at"
)
"""The columns a `Job` is read from (`data` is added when asked for)."""


class SqlJobStore(JobStore):
    @abstractmethod
    def _db(self) -> AbstractContextManager[Any]:
        """A connection in a transaction (committed at the end, rolled back on error)."""

    @abstractmethod
    def _execute(self, db: Any, sql: str, args: tuple[Any, ...]) -> Any:
        """Run `sql`, written with `?` placeholders, on `db`; its cursor."""

    @abstractmethod
    def _job(self, row: Any) -> Job:
        """The job a row of `COLUMNS` (and perhaps `data`) holds."""

    def get(self, job_id: str, *, with_data: bool = False) -> Job | None:
        with self._db() as db:
            return self._get(db, job_id, with_data=with_data)

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        adapter_path: str | None = None,
        webhook: bool = False,
    ) -> Job | None:
        if state not in TERMINAL_STATES:
            raise ValueError(f"a job cannot finish in state {state.value!r}")
        with self._db() as db:
            updated = self._execute(
                db,
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, adapter_path = ?,"
                " webhook = ? WHERE id = ? AND state = 'running'",
                (
                    state.value,
                    time.time(),
                    error,
                    adapter_path,
                    "pending" if webhook else None,
                    job_id,
                ),
            ).rowcount
            return self._get(db, job_id) if updated else None

    def cancel_queued(self, job_id: str, *, webhook: bool = False) -> Job | None:
        with self._db() as db:
            updated = self._execute(
                db,
                "UPDATE jobs SET state = 'cancelled', finished_at = ?, webhook = ?,"
                " error = 'Cancelled while queued.' WHERE id = ? AND state = 'queued'",
                (time.time(), "pending" if webhook else None, job_id),
            ).rowcount
            return self._get(db, job_id) if updated else None

    def request_stop(self, job_id: str) -> Job | None:
        with self._db() as db:
            updated = self._execute(
                db,
                "UPDATE jobs SET stop_requested = TRUE WHERE id = ? AND state = 'running'",
                (job_id,),
            ).rowcount
            return self._get(db, job_id) if updated else None

    def heartbeat(self, worker: str) -> int:
        with self._db() as db:
            return int(
                self._execute(
                    db,
                    "UPDATE jobs SET heartbeat_at = ? WHERE worker = ? AND state = 'running'",
                    (time.time(), worker),
                ).rowcount
            )

    def fail_queued(self, model: str, message: str) -> list[Job]:
        with self._db() as db:
            rows = self._execute(
                db,
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?,"
                " webhook = 'pending' WHERE state = 'queued' AND model = ? RETURNING id",
                (time.time(), message, model),
            ).fetchall()
            return [self._one(db, row["id"]) for row in rows]

    def set_webhook(self, job_id: str, status: str) -> None:
        with self._db() as db:
            self._execute(db, "UPDATE jobs SET webhook = ? WHERE id = ?", (status, job_id))

    # Rows.

    def _get(self, db: Any, job_id: str, *, with_data: bool = False) -> Job | None:
        columns = COLUMNS + (", data" if with_data else "")
        row = self._execute(db, f"SELECT {columns} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._job(row)

    def _one(self, db: Any, job_id: str) -> Job:
        job = self._get(db, job_id)
        assert job is not None
        return job
