"""Jobs (training, fine-tune, distillation): what they are and where they are kept.

`JobStore` is the interface; `SqliteJobStore` keeps jobs in the data directory's
`gateway.db` (the default), `gateway.jobs.postgres.PostgresJobStore` in PostgreSQL for
replicas that share them; `gateway.database.open_job_store(database_url)` opens either.
The server and its training worker processes use the same store.
"""

from gateway.jobs.sqlite import SqliteJobStore
from gateway.jobs.store import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Job,
    JobState,
    JobStore,
    LogLine,
    NewJob,
    QueueFull,
    StepMetrics,
)

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "Job",
    "JobState",
    "JobStore",
    "LogLine",
    "NewJob",
    "QueueFull",
    "SqliteJobStore",
    "StepMetrics",
]
