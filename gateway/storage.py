"""The Kobold family's stories, kept in the gateway's database (`database_url`): the save
slots (`kobold_saves`) and the multiplayer story (`kobold_story`).

`StoryStore` writes its statements once; an implementation runs each in a transaction of
its own, committed before returning, so a crash loses nothing that was acknowledged:
`SqliteStoryStore` in the data directory's `gateway.db` (the default; one connection per
call, WAL mode, the tables created on first use) and
`gateway.storage_postgres.PostgresStoryStore` in PostgreSQL, shared by replicas. The
methods are async and run their SQL in a worker thread (`asyncio.to_thread`).
`gateway.database.open_story_store(database_url)` opens either.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from abc import ABC, abstractmethod
from contextlib import closing
from pathlib import Path
from typing import Any

from gateway.database.sqlite import SqliteFile, schema

SCHEMA = """
CREATE TABLE IF NOT EXISTS kobold_saves (
    slot INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    format TEXT NOT NULL,
    data TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kobold_story (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    data TEXT NOT NULL,
    data_format TEXT NOT NULL,
    turn_major INTEGER NOT NULL,
    turn_minor INTEGER NOT NULL,
    sender TEXT NOT NULL,
    updated REAL NOT NULL
);
"""
"""SQLite's tables (PostgreSQL's are version 2 of `gateway.database.postgres.MIGRATIONS`)."""

Row = dict[str, Any]

# The statements, in the SQL both databases speak (`?` placeholders).
_SAVE = (
    "INSERT INTO kobold_saves (slot, title, format, data, updated) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (slot) DO UPDATE SET title = excluded.title, format = excluded.format,"
    " data = excluded.data, updated = excluded.updated"
)
# One upsert counts the turn from the row as it is when written (a second writer waits
# for the first one's row lock), so writers at once never lose a turn.
_ADVANCE = (
    "INSERT INTO kobold_story (id, data, data_format, turn_major, turn_minor, sender, updated)"
    " VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data,"
    " data_format = excluded.data_format, turn_major = kobold_story.turn_major + ?,"
    " turn_minor = CASE WHEN ? THEN 0 ELSE kobold_story.turn_minor + 1 END,"
    " sender = excluded.sender, updated = excluded.updated RETURNING *"
)


class StoryStore(ABC):
    """Async access to the stories (the tables exist from the first call on)."""

    @abstractmethod
    def _run(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        """Run one statement in a transaction of its own, committed before returning; the
        rows it returns (none for a statement that returns no rows)."""

    def close(self) -> None:
        """Give back what the store holds (a PostgreSQL store's share of the pool)."""

    async def _query(self, sql: str, *args: Any) -> list[Row]:
        return await asyncio.to_thread(self._run, sql, args)

    # Save slots

    async def save_story(self, slot: int, title: str, fmt: str, data: str) -> None:
        await self._query(_SAVE, slot, title, fmt, data, time.time())

    async def load_story(self, slot: int) -> Row | None:
        rows = await self._query("SELECT * FROM kobold_saves WHERE slot = ?", slot)
        return rows[0] if rows else None

    async def erase_story(self, slot: int) -> None:
        await self._query("DELETE FROM kobold_saves WHERE slot = ?", slot)

    async def story_titles(self, slots: int) -> list[str]:
        rows = await self._query("SELECT slot, title FROM kobold_saves WHERE slot < ?", slots)
        titles = [""] * slots
        for row in rows:
            titles[row["slot"]] = row["title"] or "Untitled"
        return titles

    # The multiplayer story

    async def multiplayer(self) -> Row | None:
        rows = await self._query("SELECT * FROM kobold_story WHERE id = 1")
        return rows[0] if rows else None

    async def set_multiplayer(self, data: str, fmt: str, sender: str, full: bool) -> Row:
        """Store the story and advance the turn: a full update starts a new major turn
        (turn minor 0), any other one the next minor turn. Atomic: updates at once, from
        any number of replicas, each get a turn of their own."""
        first = (1, 0) if full else (0, 1)
        rows = await self._query(_ADVANCE, data, fmt, *first, sender, time.time(), int(full), full)
        return rows[0]


class SqliteStoryStore(StoryStore):
    """The stories in the SQLite database at `path` (created with its tables on first use)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = SqliteFile(path, schema(SCHEMA))

    def _connect(self) -> sqlite3.Connection:
        connection = self._file.connect()
        connection.row_factory = _dict_row
        return connection

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        with closing(self._connect()) as connection, connection:
            return connection.execute(sql, args).fetchall()


def _dict_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, values, strict=True)}
