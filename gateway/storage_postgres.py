"""`PostgresStoryStore`: the Kobold stories (`gateway.storage`) in PostgreSQL, shared by
several gateway replicas (`database_url = "postgresql://..."`).

The statements are `StoryStore`'s, the same as on SQLite; the tables are version 2 of the
gateway's database schema, and the connections come from its pool
(`gateway.database.postgres`).
"""

from __future__ import annotations

from typing import Any

from gateway.database.postgres import DatabaseUser, placeholders
from gateway.storage import Row, StoryStore


class PostgresStoryStore(DatabaseUser, StoryStore):
    def __init__(self, url: str):
        self.use_database(url)

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        with self.database.transaction() as db:
            cursor = db.execute(placeholders(sql), args)
            return cursor.fetchall() if cursor.description is not None else []
