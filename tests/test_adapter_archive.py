"""Adapter archives: `archive_chunks` streams a directory as a tar.gz that `extract_archive`
reads back byte for byte, and every hostile or broken upload is refused with a 400
`adapter_import_invalid` that leaves nothing behind."""

from __future__ import annotations

import gzip
import io
import os
import random
import stat
import tarfile
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.adapters.archive import ArchiveLimits, Extracted, archive_chunks, extract_archive
from gateway.errors import InvalidRequest

MiB = 1024**2


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def make_adapter_dir(root: Path) -> dict[str, bytes]:
    """A directory with nested files; returns {relative path: contents}."""
    files = {
        "adapter_config.json": b'{"r": 8, "lora_alpha": 16}',
        "adapter_model.safetensors": random_bytes(300_000),
        "README.md": b"",
        "tokenizer/special tokens.txt": "caf\u00e9 \u2603\n".encode(),
        "tokenizer/deeper/vocab.bin": random_bytes(70_000, seed=1),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def written_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def chunks_to_file(chunks: list[bytes], path: Path) -> Path:
    path.write_bytes(b"".join(chunks))
    return path


# Round trips.


def test_round_trip_gives_back_the_same_files(tmp_path: Path):
    source = tmp_path / "source"
    files = make_adapter_dir(source)
    (source / "empty-dir").mkdir()
    archive = chunks_to_file(list(archive_chunks(source, "my-adapter")), tmp_path / "a.tar.gz")

    dest = tmp_path / "adapters" / "copy"
    extracted = extract_archive(archive, dest)

    assert extracted == Extracted(files=sorted(files), size_bytes=sum(map(len, files.values())))
    assert written_files(dest) == files
    assert (dest / "empty-dir").is_dir()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy"]  # no work dir left


def test_archive_entries_are_prefixed_sorted_and_only_regular(tmp_path: Path):
    source = tmp_path / "source"
    make_adapter_dir(source)
    (source / "link").symlink_to(source / "adapter_config.json")
    (source / "linked-dir").symlink_to(source / "tokenizer")
    if hasattr(os, "mkfifo"):
        os.mkfifo(source / "fifo")

    data = b"".join(archive_chunks(source, "name"))

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "name",
        "name/README.md",
        "name/adapter_config.json",
        "name/adapter_model.safetensors",
        "name/tokenizer",
        "name/tokenizer/deeper",
        "name/tokenizer/deeper/vocab.bin",
        "name/tokenizer/special tokens.txt",
    ]
    assert all(m.isdir() or m.isreg() for m in members)
    assert {(m.mode, m.uid, m.uname) for m in members if m.isreg()} == {(0o644, 0, "")}
    assert data == b"".join(archive_chunks(source, "name"))  # deterministic


def test_archive_chunks_streams_a_large_file_in_bounded_memory(tmp_path: Path):
    source = tmp_path / "source"
    source.mkdir()
    with (source / "adapter_model.safetensors").open("wb") as out:
        for seed in range(16):
            out.write(random_bytes(MiB, seed))

    tracemalloc.start()
    try:
        inflater = zlib.decompressobj(wbits=31)
        sizes, tar_size = [], 0
        for chunk in archive_chunks(source, "big", chunk_size=64 * 1024):
            sizes.append(len(chunk))
            tar_size += len(inflater.decompress(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(sizes) > 100
    assert set(sizes[:-1]) == {64 * 1024} and 0 < sizes[-1] <= 64 * 1024
    assert inflater.eof and tar_size % tarfile.RECORDSIZE == 0
    assert peak < 8 * MiB  # the 16 MiB file was never held whole


def test_streamed_chunks_concatenate_to_a_valid_tar_gz(tmp_path: Path):
    source = tmp_path / "source"
    source.mkdir()
    payload = random_bytes(3 * MiB)
    (source / "weights.bin").write_bytes(payload)

    chunks = list(archive_chunks(source, "w", chunk_size=100_000))

    assert len(chunks) > 10
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:gz") as tar:
        member = tar.extractfile("w/weights.bin")
        assert member is not None and member.read() == payload


def test_archive_arguments_are_checked_before_streaming(tmp_path: Path):
    for prefix in ("", "a/b", "..", "."):
        with pytest.raises(ValueError):
            archive_chunks(tmp_path, prefix)
    with pytest.raises(NotADirectoryError):
        archive_chunks(tmp_path / "missing", "name")


# What extraction accepts.


def build_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w:gz"):
    """Write `members` (crafted TarInfos and their data) as an archive at `path`."""
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def entry(name: str, data: bytes = b"x", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def directory(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, b"", type=tarfile.DIRTYPE, mode=0o777)


def test_plain_tar_without_a_common_directory_extracts_as_is(tmp_path: Path):
    archive = build_tar(
        tmp_path / "a.tar",
        [entry("adapter_config.json", b"{}"), entry("sub/weights", b"abc")],
        mode="w",
    )
    extracted = extract_archive(archive, tmp_path / "out")
    assert extracted == Extracted(files=["adapter_config.json", "sub/weights"], size_bytes=5)
    assert (tmp_path / "out" / "sub" / "weights").read_bytes() == b"abc"


def test_modes_owner_and_times_from_the_archive_are_ignored(tmp_path: Path):
    archive = build_tar(
        tmp_path / "a.tar.gz",
        [
            entry("./top/", b"", type=tarfile.DIRTYPE, mode=0o700),
            entry("./top/run.sh", b"#!/bin/sh\n", mode=0o4777, uid=0, uname="root", mtime=1),
            entry("./top/secret", b"s", mode=0o000),
        ],
    )
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "secret").stat().st_mode) == 0o644
    assert (dest / "run.sh").stat().st_mtime > 1


def test_concatenated_gzip_members_are_one_archive(tmp_path: Path):
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info, data = entry("a/f", random_bytes(50_000))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    raw = tar_bytes.getvalue()
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(gzip.compress(raw[:20_000]) + gzip.compress(raw[20_000:]) + b"\0" * 64)
    assert extract_archive(archive, tmp_path / "out").files == ["f"]


def test_an_existing_destination_is_the_callers_error(tmp_path: Path):
    archive = build_tar(tmp_path / "a.tar.gz", [entry("f")])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "mine"


# What extraction refuses.


class Zeros(io.RawIOBase):
    """`size` zero bytes, read without ever holding them all."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def bomb(path: Path) -> Path:
    """100 MB of zeros gzipped to about 100 KB, its gzip tail cut off: were the ratio only
    checked at the end, the truncation would be what is reported."""
    size = 100 * 1000 * 1000
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        info = tarfile.TarInfo("bomb/zeros.bin")
        info.size = size
        tar.addfile(info, Zeros(size))
    data = path.read_bytes()
    assert len(data) < 200_000
    path.write_bytes(data[: len(data) * 9 // 10])
    return path


def lying_header(path: Path, claimed: int, actual: int) -> Path:
    """A member whose header claims `claimed` bytes, followed by `actual` bytes of data and
    then the end-of-archive marker: tar has no other way to find where data ends."""
    info = tarfile.TarInfo("adapter/weights")
    info.size = claimed
    data = random_bytes(actual)
    padding = b"\0" * (-actual % tarfile.BLOCKSIZE)
    raw = info.tobuf(tarfile.GNU_FORMAT) + data + padding + b"\0" * (2 * tarfile.BLOCKSIZE)
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    return path


def truncated(path: Path, keep: float) -> Path:
    build_tar(path, [entry("a/adapter_model.safetensors", random_bytes(200_000))])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def plain_tar_cut_after_first_member(path: Path) -> Path:
    """A plain tar cut exactly at a member boundary: tarfile alone would see a shorter archive."""
    build_tar(path, [entry("a/one", b"1" * 600), entry("a/two", b"2" * 600)], mode="w")
    path.write_bytes(path.read_bytes()[: 3 * tarfile.BLOCKSIZE])
    return path


def garbage_after_first_member(path: Path) -> Path:
    """A header that claims less data than follows: the rest is read as a (bad) header."""
    info = tarfile.TarInfo("a/weights")
    info.size = 10
    raw = info.tobuf(tarfile.GNU_FORMAT) + random_bytes(5000) + b"\0" * 1024
    path.write_bytes(gzip.compress(raw))
    return path


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, b"", type=tarfile.SYMTYPE, linkname=target)


Builder = Callable[[Path], Path]

REFUSALS: dict[str, tuple[Builder, ArchiveLimits, str]] = {
    "absolute path": (
        lambda p: build_tar(p, [entry(str(p.parent.parent / "out" / "escape"))]),
        ArchiveLimits(),
        "absolute path",
    ),
    "dot-dot escape": (
        lambda p: build_tar(p, [entry("adapter/config"), entry("../escape")]),
        ArchiveLimits(),
        "`../escape` has a `..` component",
    ),
    "nested dot-dot escape": (
        lambda p: build_tar(p, [entry("a/../../escape")]),
        ArchiveLimits(),
        "`a/../../escape` has a `..` component",
    ),
    "symlink": (
        lambda p: build_tar(p, [entry("a/f"), symlink("a/link", "/etc/passwd")]),
        ArchiveLimits(),
        "`a/link` is a symbolic link",
    ),
    "symlink then write through it": (
        lambda p: build_tar(p, [symlink("a/dir", ".."), entry("a/dir/escape")]),
        ArchiveLimits(),
        "`a/dir` is a symbolic link",
    ),
    "hard link": (
        lambda p: build_tar(
            p, [entry("a/f"), entry("a/hard", b"", type=tarfile.LNKTYPE, linkname="a/f")]
        ),
        ArchiveLimits(),
        "`a/hard` is a hard link",
    ),
    "character device": (
        lambda p: build_tar(
            p, [entry("a/null", b"", type=tarfile.CHRTYPE, devmajor=1, devminor=3)]
        ),
        ArchiveLimits(),
        "`a/null` is a character device",
    ),
    "block device": (
        lambda p: build_tar(p, [entry("a/sda", b"", type=tarfile.BLKTYPE, devmajor=8)]),
        ArchiveLimits(),
        "`a/sda` is a block device",
    ),
    "fifo": (
        lambda p: build_tar(p, [entry("a/f"), entry("a/pipe", b"", type=tarfile.FIFOTYPE)]),
        ArchiveLimits(),
        "`a/pipe` is a FIFO",
    ),
    "sparse file": (
        lambda p: build_tar(
            p,
            [entry("a/s", b"data", pax_headers={"GNU.sparse.map": "0,4", "GNU.sparse.size": "4"})],
        ),
        ArchiveLimits(),
        "`a/s` is a sparse file",
    ),
    "control characters in a name": (
        lambda p: build_tar(p, [entry("a/evil\nname")]),
        ArchiveLimits(),
        "control characters",
    ),
    "a file inside a file": (
        lambda p: build_tar(p, [entry("a/f"), entry("a/f/g")]),
        ArchiveLimits(),
        "`a/f/g` is inside a file",
    ),
    "an unknown member type": (
        lambda p: build_tar(p, [entry("a/f"), entry("a/odd", b"", type=b"Z")]),
        ArchiveLimits(),
        "`a/odd` is of unknown type `Z`",
    ),
    "a backslash in a name": (
        lambda p: build_tar(p, [entry("a\\..\\..\\escape")]),
        ArchiveLimits(),
        "backslash",
    ),
    "a name too long": (
        lambda p: build_tar(p, [entry("a/" + "n" * 256)]),
        ArchiveLimits(),
        "too long",
    ),
    "headers far larger than any adapter needs": (
        lambda p: build_tar(p, [entry("a/f", pax_headers={"comment": "x" * 17 * MiB})], mode="w"),
        ArchiveLimits(max_entries=10),
        "bytes of tar headers, names and padding",
    ),
    "a file listed twice": (
        lambda p: build_tar(p, [entry("a/f", b"one"), entry("a/f", b"two")]),
        ArchiveLimits(),
        "`a/f` appears twice",
    ),
    "too many entries": (
        lambda p: build_tar(p, [directory("a")] + [entry(f"a/{i}") for i in range(5)]),
        ArchiveLimits(max_entries=5),
        "more than 5 members",
    ),
    "too many bytes in one file": (
        lambda p: build_tar(p, [entry("a/big", random_bytes(MiB + 1))]),
        ArchiveLimits(max_bytes=MiB),
        f"more than {MiB} bytes (the limit was passed in member `a/big`)",
    ),
    "too many bytes across files": (
        lambda p: build_tar(p, [entry(f"a/{i}", random_bytes(300_000, i)) for i in range(4)]),
        ArchiveLimits(max_bytes=MiB),
        f"more than {MiB} bytes (the limit was passed in member `a/3`)",
    ),
    "a header claiming a terabyte, over the byte limit": (
        lambda p: lying_header(p, claimed=10**12, actual=3 * MiB),
        ArchiveLimits(max_bytes=MiB),
        f"more than {MiB} bytes",
    ),
    "a header claiming a terabyte, under the byte limit": (
        lambda p: lying_header(p, claimed=10**12, actual=3 * MiB),
        ArchiveLimits(),
        "truncated or corrupt in member `adapter/weights`",
    ),
    "a header claiming less than follows": (
        garbage_after_first_member,
        ArchiveLimits(),
        "corrupt after member `a/weights`",
    ),
    "decompression bomb": (bomb, ArchiveLimits(), "decompression bomb"),
    "garbage bytes": (
        lambda p: (p.write_bytes(b"this is not an archive\n" * 100), p)[1],
        ArchiveLimits(),
        "not a tar archive",
    ),
    "corrupt gzip": (
        lambda p: (p.write_bytes(b"\x1f\x8b" + random_bytes(4000)), p)[1],
        ArchiveLimits(),
        "gzip data is corrupt",
    ),
    "an empty upload": (lambda p: (p.write_bytes(b""), p)[1], ArchiveLimits(), "empty"),
    "truncated gzip": (lambda p: truncated(p, 0.5), ArchiveLimits(), "truncated"),
    "gzip without its trailer": (
        lambda p: truncated(p, 0.9999),
        ArchiveLimits(),
        "truncated",
    ),
    "plain tar cut mid-member": (
        lambda p: (
            p.write_bytes(
                build_tar(p, [entry("a/f", random_bytes(5000))], mode="w").read_bytes()[:2048]
            ),
            p,
        )[1],
        ArchiveLimits(),
        "truncated or corrupt in member `a/f`",
    ),
    "plain tar cut at a member boundary": (
        plain_tar_cut_after_first_member,
        ArchiveLimits(),
        "no end-of-archive marker",
    ),
    "an archive with no members": (
        lambda p: build_tar(p, []),
        ArchiveLimits(),
        "contains no files.",
    ),
    "only directories": (
        lambda p: build_tar(p, [directory("a"), directory("a/b")]),
        ArchiveLimits(),
        "no files (only directories)",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_archives_leave_nothing_behind(tmp_path: Path, case: str):
    build, limits, problem = REFUSALS[case]
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    archive = build(tmp_path / "in" / "upload.tar.gz")
    dest = tmp_path / "out" / "adapter"

    with pytest.raises(InvalidRequest) as refused:
        extract_archive(archive, dest, limits)

    error = refused.value
    assert (error.status, error.code, error.param) == (400, "adapter_import_invalid", "archive")
    assert problem in error.message
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no work dir, no escaped file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert [p.name for p in (tmp_path / "in").iterdir()] == ["upload.tar.gz"]
