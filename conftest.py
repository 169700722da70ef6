"""Fixtures shared by every test folder of the repository, and the test plugins.

The test plugin distributions under `tests/plugins/` (a third-party backend found through
the `gateway` entry-point group) are pip-installed into a folder of their own that only
the test process puts on `sys.path`: the tests find them through real entry points, while
the development environment that `python3 dev.py serve` runs never sees them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent
TEST_PLUGINS = sorted((ROOT / "tests" / "plugins").iterdir())


def _plugins_digest() -> str:
    h = hashlib.sha256()
    for folder in TEST_PLUGINS:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "egg-info" not in str(path) and "__pycache__" not in str(path):
                h.update(str(path.relative_to(ROOT)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def install_test_plugins() -> Path:
    """The folder holding the installed test plugins (installed once per change)."""
    target = Path(sys.prefix) / "test-plugins" / _plugins_digest()
    if not target.is_dir():
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(partial)]
            + [str(p) for p in TEST_PLUGINS],
            check=True,
        )
        try:
            partial.rename(target)
        except OSError:  # another test process installed it first
            shutil.rmtree(partial, ignore_errors=True)
    return target


def pytest_configure(config: pytest.Config) -> None:
    sys.path.insert(0, str(install_test_plugins()))


pytest_plugins = ["gateway.testing.fixtures"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server (tests/pg_server.py), started once for the session when a
    test asks for it; without the `postgresql` package those tests skip, saying so."""
    from pg_server import PostgresServer, binaries

    found = binaries()
    if found is None:
        pytest.skip(
            "PostgreSQL is not installed: `python3 dev.py system-deps` installs it (CI does)"
        )
    server = PostgresServer(found).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def data_dir(gateway_data_dir: Path) -> Path:
    """One data directory per test session, so the default model is converted once: the
    plugin fixtures' `gateway_data_dir` (`gateway.testing.fixtures`), which
    TEST_GATEWAY_DATA_DIR names to keep the converted model between sessions (the name
    avoids the GATEWAY_ prefix, which the settings loader reads).
    """
    # tests that serve from a data directory of their own link this one's models in
    (gateway_data_dir / "models").mkdir(parents=True, exist_ok=True)
    return gateway_data_dir


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address of a real local Ray cluster (tests/ray_cluster.py), started once for
    the session when a test asks for it."""
    pytest.importorskip("ray", reason="Ray is in the test extra: pip install -e '.[test]'")
    from ray_cluster import RayCluster

    cluster = RayCluster().start()
    yield cluster.address
    cluster.stop()
