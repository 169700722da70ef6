"""`PromptStore`: recorded prompts (table `recorded_prompts`) in the gateway's database
(`database_url`): `SqlitePromptStore` in the data directory's `gateway.db` (the default),
`gateway.recording.postgres.PostgresPromptStore` in PostgreSQL, shared by replicas;
`gateway.database.open_prompt_store(database_url, ...)` opens either. Calls block (the
recorder writes from a thread of its own).

A prompt is kept once per model: serving it again refreshes its time and tenant (an upsert
on the model and a digest of the prompt, keeping the newer time). Retention drops prompts
last served more than `max_age_days` ago and the oldest beyond `max_records`; it runs on
the first write and then after every `prune_every` written prompts, so between two prunes
the table may exceed `max_records` by fewer than `prune_every` rows.

The SQLite store follows the job store's habits: one connection per call (the store may be
used from any thread), WAL mode, the schema created on the first write. Reading never
creates anything: a database or table that does not exist yet holds no prompts.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from gateway.database.sqlite import TIMEOUT, SqliteFile, schema

SCHEMA = """
CREATE TABLE IF NOT EXISTS recorded_prompts (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    model TEXT NOT NULL,
    tenant TEXT,
    digest TEXT NOT NULL,
    messages TEXT,
    prompt TEXT,
    UNIQUE (model, digest)
);
CREATE INDEX IF NOT EXISTS recorded_prompts_time ON recorded_prompts (time);
"""
"""SQLite's table (PostgreSQL's is version 2 of `gateway.database.postgres.MIGRATIONS`)."""

_UPSERT = (
    "INSERT INTO recorded_prompts (time, model, tenant, digest, messages, prompt)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model, digest) DO UPDATE"
    " SET time = excluded.time, tenant = excluded.tenant"
    " WHERE excluded.time >= recorded_prompts.time"
)

DAY = 86400.0
_MESSAGES = list[dict[str, str]]


class RecordedPrompt(msgspec.Struct, kw_only=True, frozen=True):
    """One served prompt: exactly one of `messages` (a chat, `{"role", "content"}` dicts,
    tool calls left out) and `prompt` (a text completion's prompt) is set. `time` (Unix
    seconds) is when the prompt was last served; `tenant` whom for (None: anonymous)."""

    time: float
    model: str
    tenant: str | None = None
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None


class PromptStore(ABC):
    """Recorded prompts, bounded by count and age. The statements both databases speak
    (`?` placeholders) are written here; an implementation runs them and says how it
    selects each prompt's latest record and the records beyond `max_records`."""

    _SELECT: ClassVar[str]
    """Each distinct prompt's most recent record (`{where}`: the filters), newest first."""
    _PRUNE_EXCESS: ClassVar[str]
    """Delete the records beyond the newest `?`."""

    def __init__(
        self,
        *,
        max_records: int = 10000,
        max_age_days: float = 30.0,
        prune_every: int = 100,
        clock: Callable[[], float] = time.time,
    ):
        if max_records < 1 or max_age_days <= 0 or prune_every < 1:
            raise ValueError(
                "max_records and prune_every must be at least 1 and max_age_days above 0"
            )
        self.max_records = max_records
        self.max_age_days = max_age_days
        self.prune_every = prune_every
        self.clock = clock
        self._since_prune = prune_every  # the first write prunes what earlier runs left

    @abstractmethod
    def _write(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """Run `sql` once per row of arguments, in one transaction; the rows changed."""

    @abstractmethod
    def _read(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        """The rows of a query (none when no prompt was ever recorded)."""

    def close(self) -> None:
        """Give back what the store holds (a PostgreSQL store's share of the pool)."""

    # Writing.

    def add(self, records: Sequence[RecordedPrompt]) -> None:
        """Store `records` (a prompt already stored for its model gets the newer time and
        tenant), then prune when `prune_every` prompts were written since the last prune."""
        if not records:
            return
        # In (model, digest) order: replicas writing the same prompts lock them in one order.
        rows = sorted((_row(record) for record in records), key=lambda row: (row[1], row[3]))
        self._write(_UPSERT, rows)
        self._since_prune += len(records)
        if self._since_prune >= self.prune_every:
            self.prune()

    def prune(self) -> int:
        """Drop prompts older than `max_age_days` and the oldest beyond `max_records`;
        returns how many went. Both deletions walk the index on time, not the table."""
        cutoff = self.clock() - self.max_age_days * DAY
        dropped = self._write("DELETE FROM recorded_prompts WHERE time < ?", [(cutoff,)])
        dropped += self._write(self._PRUNE_EXCESS, [(self.max_records,)])
        self._since_prune = 0
        return dropped

    # Reading.

    def select(
        self,
        *,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[RecordedPrompt]:
        """Distinct prompts, newest first, at most `limit` (ties: by digest).

        `model`: only that model's prompts (None: every model's, a prompt served to
        several models counted once, with the model that served it last). `since`
        (inclusive) and `until` (exclusive) bound the time the prompt was last served.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        where, args = _where(model, since, until)
        rows = self._read(self._SELECT.format(where=where), (*args, limit))
        return [_record(row) for row in rows]

    def count(
        self, *, model: str | None = None, since: float | None = None, until: float | None = None
    ) -> int:
        """How many distinct prompts `select` with the same filters finds, without a limit."""
        where, args = _where(model, since, until)
        rows = self._read(
            f"SELECT COUNT(DISTINCT digest) AS found FROM recorded_prompts{where}", args
        )
        return int(rows[0]["found"]) if rows else 0


class SqlitePromptStore(PromptStore):
    """Recorded prompts in the SQLite database at `path`."""

    # With exactly one max() aggregate, SQLite takes the bare columns from the row
    # holding the maximum: each prompt's most recent record.
    _SELECT = (
        "SELECT max(time) AS latest, model, tenant, messages, prompt"
        " FROM recorded_prompts{where} GROUP BY digest ORDER BY latest DESC, digest LIMIT ?"
    )
    _PRUNE_EXCESS = (
        "DELETE FROM recorded_prompts WHERE id IN (SELECT id FROM recorded_prompts"
        " ORDER BY time DESC, id DESC LIMIT -1 OFFSET ?)"
    )

    def __init__(self, path: Path, **options: Any):
        super().__init__(**options)
        self.path = path
        self._file = SqliteFile(path, schema(SCHEMA))

    @classmethod
    def in_data_dir(cls, data_dir: Path, **options: Any) -> SqlitePromptStore:
        return cls(data_dir / "gateway.db", **options)

    def _write(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """Writes create the folder, the file and the table if needed."""
        with closing(self._file.connect()) as connection, connection:
            return connection.executemany(sql, rows).rowcount

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        """Reads create nothing: no file or no table yet, no rows."""
        if not self._file.ready and not self.path.exists():
            return []
        with closing(sqlite3.connect(self.path, timeout=TIMEOUT)) as connection:
            connection.row_factory = sqlite3.Row
            found = (
                self._file.ready
                or connection.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recorded_prompts'"
                ).fetchone()
            )
            if not found:
                return []
            return [dict(row) for row in connection.execute(sql, args).fetchall()]


def _where(
    model: str | None, since: float | None, until: float | None
) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = []
    args: list[Any] = []
    if model is not None:
        clauses.append("model = ?")
        args.append(model)
    if since is not None:
        clauses.append("time >= ?")
        args.append(since)
    if until is not None:
        clauses.append("time < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _row(record: RecordedPrompt) -> tuple[Any, ...]:
    if (record.messages is None) == (record.prompt is None):
        raise ValueError("a recorded prompt has exactly one of `messages` and `prompt`")
    messages = None if record.messages is None else msgspec.json.encode(record.messages)
    key = (
        ["messages", record.messages] if record.messages is not None else ["prompt", record.prompt]
    )
    digest = hashlib.sha256(msgspec.json.encode(key)).hexdigest()
    return (
        record.time,
        record.model,
        record.tenant,
        digest,
        None if messages is None else messages.decode(),
        record.prompt,
    )


def _record(row: Mapping[str, Any]) -> RecordedPrompt:
    messages = row["messages"]
    return RecordedPrompt(
        time=row["latest"],
        model=row["model"],
        tenant=row["tenant"],
        messages=None if messages is None else msgspec.json.decode(messages, type=_MESSAGES),
        prompt=row["prompt"],
    )
