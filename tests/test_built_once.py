"""`gateway.utils.built_once`: the cache folders of GGUF conversions and ONNX exports."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gateway.utils import built_once


def writer(calls: list[str], pause: float = 0.0):
    def build(folder: Path) -> None:
        calls.append(folder.name)
        time.sleep(pause)
        (folder / "weights.bin").write_bytes(b"w")
        (folder / "ready.json").write_text("{}")

    return build


def test_a_folder_is_built_once_and_renamed_into_place(tmp_path: Path) -> None:
    calls: list[str] = []
    target = tmp_path / "cache" / "model-abc"
    assert built_once(target, "ready.json", writer(calls)) == target
    assert built_once(target, "ready.json", writer(calls)) == target
    assert len(calls) == 1 and calls[0].startswith(".model-abc.")  # built beside, renamed
    assert sorted(p.name for p in target.iterdir()) == ["ready.json", "weights.bin"]
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []


def test_what_a_killed_build_left_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "model-abc"
    leftover = tmp_path / ".model-abc.k1ll3d"
    leftover.mkdir()
    (leftover / "weights.bin").write_bytes(b"half")
    other = tmp_path / ".model-xyz.busy"  # another target's build: not ours to touch
    other.mkdir()
    built_once(target, "ready.json", writer([]))
    assert not leftover.exists()
    assert other.exists()


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model-abc"

    def fail(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"half")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        built_once(target, "ready.json", fail)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model-abc.lock"]


def test_concurrent_callers_share_one_build(tmp_path: Path) -> None:
    """The second caller waits on the lock and takes the first one's folder (two open
    files in one process lock each other as two processes would)."""
    calls: list[str] = []
    target = tmp_path / "model-abc"
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(built_once(target, "ready.json", writer(calls, 0.2)))
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target] * 3
    assert len(calls) == 1
