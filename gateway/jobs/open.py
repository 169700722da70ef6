"""Opening the job store a `database_url` names (kept for its importers: the gateway's
stores are opened by `gateway.database`)."""

from gateway.database import POSTGRES, SQLITE, check_url, open_job_store

__all__ = ["POSTGRES", "SQLITE", "check_url", "open_job_store"]
