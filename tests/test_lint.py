"""The code base passes ruff (lint and format), as CI checks on every change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ruff_check():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_on_the_host_schemas_and_backends():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "gateway",
            "schemas/gateway_schemas",
            "backends/engine/gateway_engine",
            "backends/torch/gateway_torch",
            "backends/onnx/gateway_onnx",
            "backends/teacher/gateway_teacher",
            "plugins/trainers/gateway_trainers",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
