"""Atomic outputs: a folder or a file is written under a hidden temporary name next to its
final one and renamed into place, so a crash never leaves half of it under that name."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def refuse_existing(output: Path) -> None:
    """An export never replaces what is already there."""
    if output.exists():
        raise FileExistsError(f"`{output}` already exists; an export writes a new path.")


def temp_sibling(output: Path, suffix: str = ".partial") -> Path:
    """A hidden, unique path in `output`'s folder (the same file system: renames are atomic)."""
    return output.parent / f".{output.name}.{uuid.uuid4().hex[:12]}{suffix}"


@contextmanager
def staged_dir(output: Path) -> Iterator[Path]:
    """A fresh staging folder, renamed to `output` when the block succeeds and removed when
    it fails."""
    refuse_existing(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_sibling(output, ".staging")
    staging.mkdir()
    try:
        yield staging
        _make_readable(staging)
        _fsync_tree(staging)
        os.rename(staging, output)
        _fsync(output.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staged_file(output: Path) -> Iterator[Path]:
    """A temporary file path, renamed to `output` when the block succeeds (the block must
    have written it) and removed when it fails."""
    refuse_existing(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = temp_sibling(output)
    try:
        yield partial
        os.chmod(partial, 0o644)
        _fsync(partial)
        os.rename(partial, output)
        _fsync(output.parent)
    finally:
        partial.unlink(missing_ok=True)


def _make_readable(folder: Path) -> None:
    """Ordinary permissions (some writers save through private temporary files)."""
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(root)
