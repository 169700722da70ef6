"""The gateway's SQLite database in the data directory (`gateway.db`).

Small, durable state that must survive restarts: Kobold story saves and the multiplayer
story. Every call opens its own connection in a worker thread (`asyncio.to_thread`), in
WAL mode, and commits before returning: a crash loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

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


class Store:
    """Async access to the database at `path` (created with its tables on first use)."""

    def __init__(self, path: Path):
        self.path = path
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30)
        connection.row_factory = sqlite3.Row
        if not self._ready:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            self._ready = True
        return connection

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with closing(self._connect()) as connection, connection:
            return connection.execute(sql, args).fetchall()

    async def execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return await asyncio.to_thread(self._run, sql, args)

    # Kobold story saves

    async def save_story(self, slot: int, title: str, fmt: str, data: str) -> None:
        await self.execute(
            "INSERT INTO kobold_saves (slot, title, format, data, updated) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(slot) DO UPDATE SET title = excluded.title, format = excluded.format,"
            " data = excluded.data, updated = excluded.updated",
            (slot, title, fmt, data, time.time()),
        )

    async def load_story(self, slot: int) -> sqlite3.Row | None:
        rows = await self.execute("SELECT * FROM kobold_saves WHERE slot = ?", (slot,))
        return rows[0] if rows else None

    async def story_titles(self, slots: int) -> list[str]:
        rows = await self.execute("SELECT slot, title FROM kobold_saves WHERE slot < ?", (slots,))
        titles = [""] * slots
        for row in rows:
            titles[row["slot"]] = row["title"] or "Untitled"
        return titles

    # The multiplayer story

    async def multiplayer(self) -> sqlite3.Row | None:
        rows = await self.execute("SELECT * FROM kobold_story WHERE id = 1")
        return rows[0] if rows else None

    async def set_multiplayer(self, data: str, fmt: str, sender: str, full: bool) -> sqlite3.Row:
        """Store the story and advance the turn: a full update starts a new major turn."""

        def update() -> sqlite3.Row:
            with closing(self._connect()) as connection, connection:
                row = connection.execute("SELECT * FROM kobold_story WHERE id = 1").fetchone()
                major = row["turn_major"] if row else 0
                minor = row["turn_minor"] if row else 0
                major, minor = (major + 1, 0) if full else (major, minor + 1)
                connection.execute(
                    "INSERT INTO kobold_story VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO"
                    " UPDATE SET data = excluded.data, data_format = excluded.data_format,"
                    " turn_major = excluded.turn_major, turn_minor = excluded.turn_minor,"
                    " sender = excluded.sender, updated = excluded.updated",
                    (data, fmt, major, minor, sender, time.time()),
                )
                result = connection.execute("SELECT * FROM kobold_story WHERE id = 1").fetchone()
                assert result is not None
                return result

        return await asyncio.to_thread(update)
