"""A real local Ray cluster for the tests: `ray start --head` of this environment's Ray on
a free port, in a short temporary directory, 2 CPUs, no dashboard; `ray stop` at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from live import free_port

RAY = Path(sys.executable).parent / "ray"
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
"""No usage reports (nothing leaves the machine); no token (the cluster is on loopback)."""


class RayCluster:
    def __init__(self, cpus: int = 2):
        self.cpus = cpus
        self.port = free_port()
        self.temp = tempfile.mkdtemp(prefix="ray-")  # Ray's socket paths must stay short
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> RayCluster:
        subprocess.run(
            [
                str(RAY),
                "start",
                "--head",
                f"--port={self.port}",
                f"--num-cpus={self.cpus}",
                "--include-dashboard=false",
                f"--temp-dir={self.temp}",
                "--disable-usage-stats",
            ],
            check=True,
            env={**os.environ, **ENV},
            capture_output=True,
            timeout=120,
        )
        os.environ.update(ENV)  # the gateway processes the tests start connect without one
        return self

    def stop(self) -> None:
        subprocess.run(
            [str(RAY), "stop", "--force"],
            env={**os.environ, **ENV},
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.temp, ignore_errors=True)
