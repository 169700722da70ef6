"""The gateway's database, as `database_url` names it (`Settings.database()`): SQLite, the
data directory's `gateway.db` by default (`sqlite:///path`), or PostgreSQL
(`postgresql://...`) for the state several gateway replicas share.

Three stores keep their state there, each with an SQLite and a PostgreSQL implementation
behind one interface: jobs (`open_job_store`), the Kobold story saves and multiplayer story
(`open_story_store`) and the recorded prompts (`open_prompt_store`). On PostgreSQL they
share one connection pool per process and one versioned schema (`gateway.database.postgres`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.jobs.store import JobStore
    from gateway.recording.store import PromptStore
    from gateway.storage import StoryStore

SQLITE = "sqlite:///"
POSTGRES = ("postgresql://", "postgres://")


def check_url(url: str) -> None:
    """A ConfigError unless `url` names a database this gateway can open."""
    if url.startswith(SQLITE) and len(url) > len(SQLITE):
        return
    if url.startswith(POSTGRES):
        return
    raise ConfigError(
        f"invalid settings: database_url `{url}`: use `sqlite:///path/to/gateway.db` or "
        "`postgresql://user:password@host:port/database`"
    )


def sqlite_path(url: str) -> Path:
    """The file an `sqlite:///` URL names."""
    return Path(url.removeprefix(SQLITE))


def open_job_store(url: str) -> JobStore:
    """The job store at `url` (see `check_url`)."""
    check_url(url)
    if url.startswith(POSTGRES):
        from gateway.jobs.postgres import PostgresJobStore

        return PostgresJobStore(url)
    from gateway.jobs.sqlite import SqliteJobStore

    return SqliteJobStore(sqlite_path(url))


def open_story_store(url: str) -> StoryStore:
    """The Kobold story store at `url` (see `check_url`)."""
    check_url(url)
    if url.startswith(POSTGRES):
        from gateway.storage_postgres import PostgresStoryStore

        return PostgresStoryStore(url)
    from gateway.storage import SqliteStoryStore

    return SqliteStoryStore(sqlite_path(url))


def open_prompt_store(url: str, **options: Any) -> PromptStore:
    """The recorded prompts at `url` (see `check_url`); `options` are `PromptStore`'s
    (`max_records`, `max_age_days`, `prune_every`, `clock`)."""
    check_url(url)
    if url.startswith(POSTGRES):
        from gateway.recording.postgres import PostgresPromptStore

        return PostgresPromptStore(url, **options)
    from gateway.recording.store import SqlitePromptStore

    return SqlitePromptStore(sqlite_path(url), **options)
