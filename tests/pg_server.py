"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, a cluster made
with `initdb` in a temporary directory, listening on a free loopback port, stopped at the
end of the session. `python3 dev.py system-deps` installs the package (CI does)."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from live import free_port


def binaries() -> Path | None:
    """The folder of `initdb` and `pg_ctl`, if PostgreSQL is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.port = free_port()
        self.user = "postgres"
        self._as_user: list[str] = []
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.root, user="postgres", group="postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        else:
            self.user = os.environ.get("USER", "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, text=True)

    def start(self) -> PostgresServer:
        data = self.root / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", self.user, "-A", "trust")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.root / "log"),
            "-o", options, "-w", "start",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
        ).returncode:
            assert time.monotonic() < deadline, (self.root / "log").read_text()
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        subprocess.run(
            [*self._as_user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m",
             "immediate", "stop"],
            capture_output=True,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def database_for(self, key: str) -> str:
        """The URL of a database of its own for `key` (a test's folder), made once."""
        import psycopg

        name = "t_" + hashlib.sha1(key.encode()).hexdigest()[:16]
        with psycopg.connect(self.url(), autocommit=True) as db:
            exists = db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
