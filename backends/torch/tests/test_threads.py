"""The OpenMP wait policy is set before torch loads, in the real start-up path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from gateway_torch.threads import DEFAULTS, tune_openmp

STARTUP = """
import os, sys
from gateway.gateway import Gateway
from gateway.settings import Settings
Gateway(Settings())  # plugins registered, models built, nothing loaded yet
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"), "torch" in sys.modules)
"""


def _start(env: dict[str, str]) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in DEFAULTS}
    result = subprocess.run(
        [sys.executable, "-c", STARTUP],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


def test_the_gateway_sets_the_wait_policy_before_torch_loads() -> None:
    policy, spins, _ = _start({})
    assert (policy, spins) == ("ACTIVE", "200000")


def test_an_operators_setting_wins() -> None:
    policy, spins, _ = _start({"OMP_WAIT_POLICY": "PASSIVE"})
    assert (policy, spins) == ("PASSIVE", "200000")


def test_nothing_is_set_once_torch_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    assert "torch" in sys.modules  # this test process has it
    assert tune_openmp() is False
    assert all(key not in os.environ for key in DEFAULTS)
