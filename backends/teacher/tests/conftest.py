"""The teacher's tests use the host's test helpers (`tests/live.py`: free ports, a thread
HTTP server, `gateway serve` as a process)."""

from __future__ import annotations

import sys
from pathlib import Path

HOST_TESTS = Path(__file__).resolve().parents[3] / "tests"
if str(HOST_TESTS) not in sys.path:
    sys.path.insert(0, str(HOST_TESTS))
