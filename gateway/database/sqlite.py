"""`SqliteFile`: one SQLite database file of the gateway, made ready on first use.

The job store, the Kobold stories and the recorded prompts each keep their tables in the
data directory's `gateway.db` by default. Each opens one connection per call (any thread
may use a store), in WAL mode, so readers go on while a writer writes. The first use makes
the folder, switches the file to WAL and creates the store's tables, once, under one lock
for the process: switching to WAL fails at once ("database is locked") while another
connection has the file open, whichever store that connection belongs to.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

_FIRST_USE = threading.Lock()

TIMEOUT = 30.0
"""Seconds a connection waits for another writer before it gives up."""


class SqliteFile:
    """The database at `path`, whose first `connect` runs `prepare` (the store's schema)
    on a connection of its own."""

    def __init__(self, path: Path, prepare: Callable[[sqlite3.Connection], None]):
        self.path = path
        self.prepare = prepare
        self.ready = False
        """Whether this process made the file ready (its tables exist)."""

    def connect(self) -> sqlite3.Connection:
        """A new connection; the first one makes the folder, WAL mode and the tables."""
        if not self.ready:
            with _FIRST_USE:
                if not self.ready:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    with closing(sqlite3.connect(self.path, timeout=TIMEOUT)) as connection:
                        connection.execute("PRAGMA journal_mode=WAL")
                        self.prepare(connection)
                        connection.commit()
                    self.ready = True
        return sqlite3.connect(self.path, timeout=TIMEOUT)


def schema(script: str) -> Callable[[sqlite3.Connection], None]:
    """A `prepare` that runs `script` (`CREATE TABLE IF NOT EXISTS ...` statements)."""

    def prepare(connection: sqlite3.Connection) -> None:
        connection.executescript(script)

    return prepare
