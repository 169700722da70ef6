"""The gateway's PostgreSQL database (gateway.database.postgres): one versioned schema for
every store, one connection pool per URL per process shared by the stores, and a database
made before the Kobold stories and the recorded prompts moved there migrated at first use.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.database import open_job_store, open_prompt_store, open_story_store
from gateway.database.postgres import MIGRATIONS, Database, database
from gateway.errors import ConfigError
from gateway.jobs import JobState
from gateway.recording import RecordedPrompt

RELEASED_V1 = "965906e2b9a7f40a871ad65b16be41b1e1c4581042378575343bde7b7f8241cd"
"""sha256 of version 1 (the jobs) as released: a released version is never edited."""


@pytest.fixture
def url(postgres: Any, tmp_path: Path) -> str:
    return str(postgres.database_for(str(tmp_path)))


def test_released_versions_are_unchanged():
    assert hashlib.sha256(MIGRATIONS[0].encode()).hexdigest() == RELEASED_V1
    assert len(MIGRATIONS) == 2


async def test_a_database_at_version_1_migrates_at_first_use_and_keeps_its_jobs(url: str):
    import psycopg

    with psycopg.connect(url) as db:  # what the job store made before version 2
        db.execute(
            "CREATE TABLE schema_migrations"
            " (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        db.execute(MIGRATIONS[0])
        db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (1, 1.0)")
        db.execute(
            "INSERT INTO jobs (id, kind, model, state, output_name, config, data, created_at)"
            " VALUES ('old', 'sft', 'm', 'queued', 'o', '{}', '[]', 1.0)"
        )
    stories = open_story_store(url)
    await stories.save_story(0, "New", "plain", "x")  # the first use migrates
    jobs, prompts = open_job_store(url), open_prompt_store(url)
    try:
        old = jobs.get("old")
        assert old is not None and old.state == JobState.QUEUED and old.output_name == "o"
        prompts.add([RecordedPrompt(time=time.time(), model="m", prompt="p")])
        assert prompts.count() == 1
    finally:
        for store in (stories, jobs, prompts):
            store.close()
    with psycopg.connect(url) as db:
        versions = db.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [row[0] for row in versions.fetchall()] == [1, 2]


def test_the_stores_of_one_url_share_one_pool(url: str):
    jobs, stories, prompts = open_job_store(url), open_story_store(url), open_prompt_store(url)
    shared = jobs.database  # type: ignore[attr-defined]
    assert stories.database is shared and prompts.database is shared  # type: ignore[attr-defined]
    jobs.close()
    jobs.close()  # closing twice gives back one share, once
    assert database(url) is shared  # still used by two stores
    shared.release()
    stories.close()
    prompts.close()
    again = database(url)  # the last store closed the pool; a new one is made
    assert again is not shared
    again.release()


def test_without_the_driver_postgresql_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)
    with pytest.raises(ConfigError, match=r"pip install 'gateway\[postgres\]'"):
        Database("postgresql://nobody@127.0.0.1:1/none")
