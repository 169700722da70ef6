"""`PostgresStoryStore`: the Kobold stories (`gateway.storage`) in PostgreSQL, shared by
several gateway replicas (`database_url = "postgresql://..."`).

The statements are `StoryStore`'s, the same as on SQLite; the tables are version 2 of the
gateway's database schema, and the connections come from its pool
(`gateway.database.postgres`).
"""

from __future__ import annotations

from typing import Any

from gateway.database.postgres import database, placeholders
from gateway.storage import Row, StoryStore


class PostgresStoryStore(StoryStore):
    def __init__(self, url: str):
        self.url = url
        self.database = database(url)
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.database.release()

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        with self.database.transaction() as db:
            cursor = db.execute(placeholders(sql), args)
            return cursor.fetchall() if cursor.description is not None else []
