"""The gateway's PostgreSQL database, shared by its stores (jobs, Kobold stories, recorded
prompts) when `database_url = "postgresql://..."`.

`database(url)` hands every store of a process the same `Database` for a URL: one small
connection pool, opened at first use, when the schema is brought up to date. The schema
of the whole database is one ordered list of versions (`MIGRATIONS`); each process applies
the versions the database lacks in one transaction, under an advisory lock, so replicas
starting together migrate once and a failed migration leaves nothing half done.

Needs `psycopg` and `psycopg-pool` (`pip install 'gateway[postgres]'`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.errors import ConfigError

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs (gateway.jobs.postgres)
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        state TEXT NOT NULL,
        output_name TEXT NOT NULL,
        config JSONB NOT NULL,
        data JSONB NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        step INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER NOT NULL DEFAULT 0,
        epoch DOUBLE PRECISION NOT NULL DEFAULT 0,
        loss DOUBLE PRECISION,
        learning_rate DOUBLE PRECISION,
        error TEXT,
        adapter_path TEXT,
        stop_requested BOOLEAN NOT NULL DEFAULT FALSE,
        worker TEXT,
        webhook TEXT,
        tenant TEXT,
        info JSONB NOT NULL DEFAULT '{}',
        cost DOUBLE PRECISION NOT NULL DEFAULT 0,
        heartbeat_at DOUBLE PRECISION
    );
    CREATE INDEX jobs_state ON jobs (state, model, seq);
    CREATE TABLE job_metrics (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        epoch DOUBLE PRECISION NOT NULL,
        loss DOUBLE PRECISION NOT NULL,
        learning_rate DOUBLE PRECISION NOT NULL,
        time DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX job_metrics_job ON job_metrics (job_id, step);
    CREATE TABLE job_logs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX job_logs_job ON job_logs (job_id, id);
    """,
    # 2: Kobold stories (gateway.storage_postgres), recorded prompts (gateway.recording.postgres)
    """
    CREATE TABLE kobold_saves (
        slot INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        format TEXT NOT NULL,
        data TEXT NOT NULL,
        updated DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE kobold_story (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        data TEXT NOT NULL,
        data_format TEXT NOT NULL,
        turn_major INTEGER NOT NULL,
        turn_minor INTEGER NOT NULL,
        sender TEXT NOT NULL,
        updated DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE recorded_prompts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
        model TEXT NOT NULL,
        tenant TEXT,
        digest TEXT NOT NULL,
        messages TEXT,
        prompt TEXT,
        UNIQUE (model, digest)
    );
    CREATE INDEX recorded_prompts_time ON recorded_prompts (time);
    """,
)
"""The schema, one entry per version (append; never edit a released one)."""

MIGRATION_LOCK = 7_315_001
"""The advisory lock key held while migrating (7_315_002 is the job store's)."""

POOL_SIZE = 8
"""Connections one process keeps at most for one database, all its stores together."""


class Database:
    """A process's connection pool to one PostgreSQL database (see `database`)."""

    def __init__(self, url: str):
        try:
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise ConfigError(
                "database_url names PostgreSQL, which needs its driver: "
                "pip install 'gateway[postgres]' (psycopg and psycopg-pool)"
            ) from None
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            kwargs={"autocommit": False, "row_factory": dict_row},
        )
        self._opened = False
        self._lock = threading.Lock()
        self._users = 0

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A connection in a transaction (committed at the end, rolled back on error)."""
        self._open()
        with self._pool.connection() as connection:
            yield connection

    def _open(self) -> None:
        """Open the pool and bring the schema up to date, once (other threads wait)."""
        with self._lock:
            if self._opened:
                return
            self._pool.open(wait=False)
            with self._pool.connection() as db:
                migrate(db)
            self._opened = True

    def release(self) -> None:
        """A store is done with the database; the last one closes the pool."""
        with _databases_lock:
            self._users -= 1
            if self._users > 0:
                return
            _databases.pop((os.getpid(), self.url), None)
        with self._lock:
            if self._opened:
                self._pool.close()
                self._opened = False


_databases: dict[tuple[int, str], Database] = {}
_databases_lock = threading.Lock()


def database(url: str) -> Database:
    """The `Database` at `url` for this process, made on the first call; every caller
    calls `release` once when done. Opens no connection until the first transaction."""
    key = (os.getpid(), url)  # a forked child makes a pool of its own
    with _databases_lock:
        found = _databases.get(key)
        if found is None:
            found = _databases[key] = Database(url)
        found._users += 1
        return found


class DatabaseUser:
    """A store's share of its process's `Database`: `use_database` takes it, `close`
    gives it up (once; the last share closes the pool)."""

    url: str
    database: Database
    _closed: bool

    def use_database(self, url: str) -> None:
        self.url = url
        self.database = database(url)
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.database.release()


def migrate(db: Any) -> int:
    """Apply the versions of `MIGRATIONS` the database lacks (under an advisory lock, so
    replicas starting at once migrate once); the version it is at afterwards."""
    db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
    )
    row = db.execute(
        "SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations"
    ).fetchone()
    current = int(row["version"])
    for version, script in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        db.execute(script)
        db.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
            (version, time.time()),
        )
        current = version
    db.commit()
    return current


def placeholders(sql: str) -> str:
    """`sql`, written with SQLite's `?` placeholders, for psycopg (`%s`): the stores that
    share their statements between SQLite and PostgreSQL write no literal `?` or `%`."""
    if "%" in sql:
        raise ValueError(f"a shared statement holds a literal %: {sql!r}")
    return sql.replace("?", "%s")
