"""Opening the job store a `database_url` names: `sqlite:///path` (the default, the data
directory's `gateway.db`) or `postgresql://...` (shared by replicas)."""

from __future__ import annotations

from pathlib import Path

from gateway.errors import ConfigError
from gateway.jobs.store import JobStore

SQLITE = "sqlite:///"
POSTGRES = ("postgresql://", "postgres://")


def check_url(url: str) -> None:
    """A ConfigError unless `url` names a store this gateway can open."""
    if url.startswith(SQLITE) and len(url) > len(SQLITE):
        return
    if url.startswith(POSTGRES):
        return
    raise ConfigError(
        f"invalid settings: database_url `{url}`: use `sqlite:///path/to/gateway.db` or "
        "`postgresql://user:password@host:port/database`"
    )


def open_job_store(url: str) -> JobStore:
    """The job store at `url` (see `check_url`)."""
    check_url(url)
    if url.startswith(POSTGRES):
        from gateway.jobs.postgres import PostgresJobStore

        return PostgresJobStore(url)
    from gateway.jobs.sqlite import SqliteJobStore

    return SqliteJobStore(Path(url.removeprefix(SQLITE)))
