"""Opt-in recording of served prompts (`[recording]`), for distillation jobs to learn from
the gateway's own traffic.

When `[recording] enabled`, the prompt of every generation that ends normally (not `error`
or `abort`) of the chosen `models` (empty: all) is kept in the gateway's database
(`database_url`: the data directory's `gateway.db`, or PostgreSQL shared by replicas;
table `recorded_prompts`) with its time, model and tenant; never the answer.
`Gateway.recording` (a `PromptRecorder`) writes them off the event loop and reads them back
(`select`, `count`) as distinct prompts, newest first, bounded by `max_records` and
`max_age_days`.
"""

from gateway.recording.recorder import PromptRecorder, recorded_prompt
from gateway.recording.store import PromptStore, RecordedPrompt, SqlitePromptStore

__all__ = [
    "PromptRecorder",
    "PromptStore",
    "RecordedPrompt",
    "SqlitePromptStore",
    "recorded_prompt",
]
