"""Fixtures shared by every test folder of the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory per test session, so the default model is converted once.

    Set TEST_GATEWAY_DATA_DIR to a folder to keep the converted model between sessions
    (the name avoids the GATEWAY_ prefix, which the settings loader reads).
    """
    kept = os.environ.get("TEST_GATEWAY_DATA_DIR")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return Path(kept)
    return tmp_path_factory.mktemp("data")
