"""`PromptStore`: recorded prompts in SQLite (the data directory's `gateway.db`).

The table `recorded_prompts` lives in the same file as the job store and follows its
habits: one connection per call (the store may be used from any thread), WAL mode, the
schema created on the first write. Reading never creates anything: a database or table
that does not exist yet holds no prompts.

A prompt is kept once per model: serving it again refreshes its time and tenant (an upsert
on the model and a digest of the prompt). Retention drops prompts last served more than
`max_age_days` ago and the oldest beyond `max_records`; it runs on the first write and then
after every `prune_every` written prompts, so between two prunes the table may exceed
`max_records` by fewer than `prune_every` rows.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import msgspec

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


class PromptStore:
    """Recorded prompts, bounded by count and age."""

    def __init__(
        self,
        path: Path,
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
        self.path = path
        self.max_records = max_records
        self.max_age_days = max_age_days
        self.prune_every = prune_every
        self.clock = clock
        self._ready = False
        self._since_prune = prune_every  # the first write prunes what earlier runs left

    @classmethod
    def in_data_dir(cls, data_dir: Path, **options: Any) -> PromptStore:
        return cls(data_dir / "gateway.db", **options)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection for writing; creates the folder, the file and the table if needed."""
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=30)) as connection:
            if not self._ready:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(SCHEMA)
                self._ready = True
            with connection:
                yield connection

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection | None]:
        """A connection for reading, or None when no prompt was ever recorded here."""
        if not self._ready and not self.path.exists():
            yield None
            return
        with closing(sqlite3.connect(self.path, timeout=30)) as connection:
            connection.row_factory = sqlite3.Row
            found = (
                self._ready
                or connection.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recorded_prompts'"
                ).fetchone()
            )
            yield connection if found else None

    # Writing.

    def add(self, records: Sequence[RecordedPrompt]) -> None:
        """Store `records` (a prompt already stored for its model gets the newer time and
        tenant), then prune when `prune_every` prompts were written since the last prune."""
        if not records:
            return
        with self._db() as db:
            db.executemany(_UPSERT, [_row(record) for record in records])
        self._since_prune += len(records)
        if self._since_prune >= self.prune_every:
            self.prune()

    def prune(self) -> int:
        """Drop prompts older than `max_age_days` and the oldest beyond `max_records`;
        returns how many went. Both deletions walk the index on time, not the table."""
        cutoff = self.clock() - self.max_age_days * DAY
        with self._db() as db:
            dropped = db.execute("DELETE FROM recorded_prompts WHERE time < ?", (cutoff,)).rowcount
            dropped += db.execute(
                "DELETE FROM recorded_prompts WHERE id IN (SELECT id FROM recorded_prompts"
                " ORDER BY time DESC, id DESC LIMIT -1 OFFSET ?)",
                (self.max_records,),
            ).rowcount
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
        """Distinct prompts, newest first, at most `limit`.

        `model`: only that model's prompts (None: every model's, a prompt served to
        several models counted once, with the model that served it last). `since`
        (inclusive) and `until` (exclusive) bound the time the prompt was last served.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        where, args = _where(model, since, until)
        with self._reader() as db:
            if db is None:
                return []
            # With exactly one max() aggregate, SQLite takes the bare columns from the
            # row holding the maximum: each prompt's most recent record.
            rows = db.execute(
                "SELECT max(time) AS latest, model, tenant, messages, prompt"
                f" FROM recorded_prompts{where} GROUP BY digest"
                " ORDER BY latest DESC, digest LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_record(row) for row in rows]

    def count(
        self, *, model: str | None = None, since: float | None = None, until: float | None = None
    ) -> int:
        """How many distinct prompts `select` with the same filters finds, without a limit."""
        where, args = _where(model, since, until)
        with self._reader() as db:
            if db is None:
                return 0
            (found,) = db.execute(
                f"SELECT COUNT(DISTINCT digest) FROM recorded_prompts{where}", args
            ).fetchone()
        return int(found)


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


def _record(row: sqlite3.Row) -> RecordedPrompt:
    messages = row["messages"]
    return RecordedPrompt(
        time=row["latest"],
        model=row["model"],
        tenant=row["tenant"],
        messages=None if messages is None else msgspec.json.decode(messages, type=_MESSAGES),
        prompt=row["prompt"],
    )
