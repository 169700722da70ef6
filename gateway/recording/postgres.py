"""`PostgresPromptStore`: recorded prompts (`gateway.recording.store`) in PostgreSQL,
shared by several gateway replicas (`database_url = "postgresql://..."`).

The upsert, the filters and the count are `PromptStore`'s, the same as on SQLite; each
prompt's latest record is taken with `DISTINCT ON`. The table is version 2 of the
gateway's database schema, and the connections come from its pool
(`gateway.database.postgres`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.database.postgres import DatabaseUser, placeholders
from gateway.recording.store import PromptStore


class PostgresPromptStore(DatabaseUser, PromptStore):
    # The latest record of each prompt (ties: the last written), then SQLite's order.
    _SELECT = (
        "SELECT latest, model, tenant, messages, prompt FROM (SELECT DISTINCT ON (digest)"
        " time AS latest, model, tenant, messages, prompt, digest FROM recorded_prompts{where}"
        " ORDER BY digest, time DESC, id DESC) AS latest_records"
        ' ORDER BY latest DESC, digest COLLATE "C" LIMIT ?'
    )
    _PRUNE_EXCESS = (
        "DELETE FROM recorded_prompts WHERE id IN (SELECT id FROM recorded_prompts"
        " ORDER BY time DESC, id DESC OFFSET ?)"
    )

    def __init__(self, url: str, **options: Any):
        super().__init__(**options)
        self.use_database(url)

    def _write(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> int:
        with self.database.transaction() as db, db.cursor() as cursor:
            cursor.executemany(placeholders(sql), rows)
            return int(cursor.rowcount)

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self.database.transaction() as db:
            return list(db.execute(placeholders(sql), args).fetchall())
