"""Adapter directories as tar.gz archives: the import behind `POST /v1/adapters/upload` and
the streamed export behind `GET /v1/adapters/{name}/download`.

An upload is untrusted. `extract_archive` reads it as a stream, member by member, and writes
only regular files and directories, under the destination, with its own permissions. Every
limit is counted on the bytes actually decompressed, never taken from a header, and checked
while they arrive. A refusal is a 400 `adapter_import_invalid` that names the member at fault,
and leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import uuid
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from gateway.errors import InvalidRequest

FILE_MODE = 0o644
DIR_MODE = 0o755
RATIO_GRACE_BYTES = 1024**2
"""The compression ratio is only judged once this much has been decompressed."""
HEADER_BYTES = 16 * 1024**2
HEADER_BYTES_PER_ENTRY = 8 * 1024
"""What an archive may hold besides file contents (tar headers, long names, padding):
`HEADER_BYTES` plus this much per allowed entry. More is refused before tarfile buffers it."""
MAX_NAME_BYTES = 1024
MAX_COMPONENT_BYTES = 255
READ_SIZE = 64 * 1024
COPY_SIZE = 1024**2
GZIP_MAGIC = b"\x1f\x8b"
COMPRESS_LEVEL = 1
"""Adapter weights barely compress at any level; a streamed download wants the fastest."""
REFUSED_TYPES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


@dataclass(frozen=True)
class ArchiveLimits:
    """What an uploaded archive may expand to."""

    max_entries: int = 1000
    """Members in the archive, directories included."""
    max_bytes: int = 2 * 1024**3
    """Total bytes of the files, as actually decompressed and written."""
    max_ratio: float = 200.0
    """Decompressed bytes per compressed byte above this (past 1 MiB) is a decompression bomb."""


@dataclass(frozen=True)
class Extracted:
    """What `extract_archive` wrote."""

    files: list[str]
    """The regular files written, relative to the destination (`/`-separated), sorted."""
    size_bytes: int


def refusal(message: str) -> InvalidRequest:
    """The 400 every refused archive gets."""
    return InvalidRequest(message, param="archive", code="adapter_import_invalid")


def extract_archive(
    archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()
) -> Extracted:
    """Extract a (gzip-compressed or plain) tar into `dest` (which must not exist yet; it is created).

    Only regular files and directories are written (files 0o644, directories 0o755; no owner,
    mode or time is taken from the archive). When every member lies under one top-level
    directory, that directory is stripped: an archive made by `archive_chunks(d, "name")`
    extracts to `d`'s files directly at `dest`. The files are written into a sibling work
    directory (`<dest name>.extracting-<hex>`) that is renamed to `dest` once complete.

    On any refusal raise `InvalidRequest(message, param="archive", code="adapter_import_invalid")`
    and leave nothing at `dest` (nor a work directory). `FileExistsError` if `dest` exists.
    Whether the files form a loadable adapter is the caller's check.
    """
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f"{dest.name}.extracting-{uuid.uuid4().hex}"
    work.mkdir()
    try:
        with archive.open("rb") as raw:
            stream = _TarStream(raw, limits)
            written = _extract_members(stream, work, limits)
        files = [p for p, is_file in written if is_file]
        if not files:
            raise refusal(
                "The archive contains no files" + (" (only directories)." if written else ".")
            )
        tops = {p.parts[0] for p, _ in written}
        strip = len(tops) == 1 and all(len(p.parts) > 1 for p in files)
        root = work / tops.pop() if strip else work
        root.chmod(DIR_MODE)
        root.rename(dest)
        names = sorted(str(PurePosixPath(*p.parts[1:]) if strip else p) for p in files)
        return Extracted(files=names, size_bytes=stream.content)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def archive_chunks(source: Path, prefix: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
    """A tar.gz of the regular files (and directories) under `source`, entries prefixed `<prefix>/`,
    produced incrementally as byte chunks (a streamed download: never the whole archive in memory).

    Symlinks, devices and other non-regular files are skipped (never followed). Deterministic
    order: each directory's entries sorted by name, a directory before its contents. Entries
    carry the files' modification times, mode 0o644 (0o755 for directories) and no owner.
    Every chunk but the last is `chunk_size` bytes. `prefix` must be one path segment; it and
    `source` are checked when called, before the first chunk is asked for.
    """
    if not prefix or "/" in prefix or prefix in (".", ".."):
        raise ValueError(f"archive prefix must be one path segment, not {prefix!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    if not source.is_dir():
        raise NotADirectoryError(f"{source} is not a directory")
    return _tar_gz(source, prefix, chunk_size)


def _tar_gz(source: Path, prefix: str, chunk_size: int) -> Iterator[bytes]:
    """The generator behind `archive_chunks`: one file's data at most `COPY_SIZE` at a time."""
    packer = _GzipChunker(chunk_size)
    for path, name, is_dir in _walk(source, prefix):
        info = tarfile.TarInfo(name)
        if is_dir:
            info.type = tarfile.DIRTYPE
            info.mode = DIR_MODE
            info.mtime = int(path.stat().st_mtime)
            yield from packer.feed(_header(info))
            continue
        with path.open("rb") as file:
            status = os.fstat(file.fileno())
            info.size = status.st_size
            info.mode = FILE_MODE
            info.mtime = int(status.st_mtime)
            yield from packer.feed(_header(info))
            left = info.size
            while left:
                data = file.read(min(COPY_SIZE, left))
                if not data:
                    raise OSError(f"{path} shrank while it was being archived")
                left -= len(data)
                yield from packer.feed(data)
        yield from packer.feed(tarfile.NUL * (-info.size % tarfile.BLOCKSIZE))
    end = tarfile.NUL * (2 * tarfile.BLOCKSIZE)
    yield from packer.feed(
        end + tarfile.NUL * (-(packer.tar_bytes + len(end)) % tarfile.RECORDSIZE)
    )
    yield from packer.finish()


# Extraction.


class _TarStream:
    """The archive's tar bytes, gunzipped on the fly when it is gzip-compressed: what tarfile
    reads in stream mode. Every byte handed out counts against the limits (headers and padding
    included), so a bomb is stopped on the way, and the last bytes are kept to check the
    archive's end."""

    def __init__(self, raw: BinaryIO, limits: ArchiveLimits):
        self._raw = raw
        self._limits = limits
        self._pending = raw.read(len(GZIP_MAGIC))
        """Bytes read from the archive file and not consumed yet."""
        self._read = len(self._pending)
        self._inflater = zlib.decompressobj(wbits=31) if self._pending == GZIP_MAGIC else None
        self._budget = HEADER_BYTES + HEADER_BYTES_PER_ENTRY * limits.max_entries
        self._recent: deque[tuple[int, bytes]] = deque()
        self._recent_bytes = 0
        self.produced = 0
        """Tar bytes handed out so far."""
        self.content = 0
        """Bytes of file contents read so far."""

    @property
    def consumed(self) -> int:
        """Bytes of the archive file that produced what was handed out."""
        return self._read - len(self._pending)

    def read(self, size: int = -1) -> bytes:
        size = size if size > 0 else READ_SIZE
        data = self._plain(size) if self._inflater is None else self._inflate(size)
        if data:
            self._account(data)
        return data

    def count_content(self, size: int, name: str) -> None:
        """Count `size` bytes of the file contents of member `name` against `max_bytes`."""
        self.content += size
        if self.content > self._limits.max_bytes:
            raise refusal(
                f"The archive's files hold more than {self._limits.max_bytes} bytes "
                f"(the limit was passed in member `{_shown(name)}`)."
            )

    def content_left(self) -> int:
        """How many more content bytes are allowed."""
        return self._limits.max_bytes - self.content

    def zero_block_at(self, offset: int) -> bool:
        """Whether the tar block at `offset`, among the last bytes handed out, is all zeros
        (the end-of-archive marker)."""
        block = bytearray()
        for start, chunk in self._recent:
            low = max(offset - start, 0)
            high = min(offset + tarfile.BLOCKSIZE - start, len(chunk))
            if low < high:
                block += chunk[low:high]
        return len(block) == tarfile.BLOCKSIZE and block.count(0) == tarfile.BLOCKSIZE

    def _plain(self, size: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        data = self._raw.read(size)
        self._read += len(data)
        return data

    def _inflate(self, size: int) -> bytes:
        assert self._inflater is not None
        while True:
            if self._inflater.eof and not self._next_gzip_member():
                return b""
            if not self._pending:
                self._pending = self._raw.read(READ_SIZE)
                self._read += len(self._pending)
                if not self._pending:
                    raise refusal("The archive is truncated: its gzip stream ends early.")
            try:
                data = self._inflater.decompress(self._pending, size)
            except zlib.error as error:
                raise refusal(f"The archive's gzip data is corrupt ({error}).") from None
            if self._inflater.eof:
                self._pending = self._inflater.unused_data
            else:
                self._pending = self._inflater.unconsumed_tail
            if data:
                return data

    def _next_gzip_member(self) -> bool:
        """After one gzip member: start the next one (gzip files may be concatenated, and
        padded with zeros); False at the end of the file."""
        rest = self._pending.lstrip(tarfile.NUL)
        while not rest:
            chunk = self._raw.read(READ_SIZE)
            if not chunk:
                self._pending = b""
                return False
            self._read += len(chunk)
            rest = chunk.lstrip(tarfile.NUL)
        self._pending = rest
        self._inflater = zlib.decompressobj(wbits=31)
        return True

    def _account(self, data: bytes) -> None:
        self._recent.append((self.produced, data))
        self._recent_bytes += len(data)
        while self._recent_bytes - len(self._recent[0][1]) >= 4 * READ_SIZE:
            self._recent_bytes -= len(self._recent.popleft()[1])
        self.produced += len(data)
        ratio = self._limits.max_ratio
        if self.produced > RATIO_GRACE_BYTES and self.produced > ratio * max(self.consumed, 1):
            raise refusal(
                f"The archive is a decompression bomb: {self.consumed} compressed bytes "
                f"expand to more than {self.produced} bytes (over {ratio:g} times)."
            )
        if self.produced - self.content > self._budget:
            raise refusal(
                f"The archive holds more than {self._budget} bytes of tar headers, names "
                "and padding besides its files."
            )


def _extract_members(
    stream: _TarStream, root: Path, limits: ArchiveLimits
) -> list[tuple[PurePosixPath, bool]]:
    """Write the archive's members under `root`; their paths, and whether each is a file."""
    written: list[tuple[PurePosixPath, bool]] = []
    where = ""  # in or after which member reading is, for messages
    try:
        with tarfile.open(  # type: ignore[call-overload]  # stream mode reads only
            fileobj=stream,
            mode="r|",
            bufsize=READ_SIZE,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tar:
            for count, member in enumerate(tar, start=1):
                if count > limits.max_entries:
                    raise refusal(
                        f"The archive has more than {limits.max_entries} members "
                        f"(`{_shown(member.name)}` is one too many)."
                    )
                where = f" in member `{_shown(member.name)}`"
                path = _member_path(member, root)
                if path is not None:
                    _extract_member(tar, member, root / path, stream)
                    written.append((path, member.isreg()))
                where = f" after member `{_shown(member.name)}`"
            end = tar.offset
    except tarfile.TarError as error:
        if not where and stream.produced == 0:
            raise refusal("The archive is empty.") from None
        if not where:
            raise refusal(
                f"The upload is not a tar archive (plain or gzip-compressed): {error}."
            ) from None
        raise refusal(f"The archive is truncated or corrupt{where}: {error}.") from None
    if not stream.zero_block_at(end):
        raise refusal(
            f"The archive is truncated or corrupt{where}: it has no end-of-archive marker."
        )
    while stream.read(READ_SIZE):  # the rest, to check the gzip stream ends intact
        pass
    return written


def _extract_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, stream: _TarStream
) -> None:
    """Create the directory, or write the regular file, that `member` is at `target`."""
    _make_parents(target.parent, member.name)
    if member.isdir():
        if target.is_dir():
            return
        if target.exists():
            raise refusal(f"Member `{_shown(member.name)}` is also a file.")
        _make_dir(target)
        return
    if target.exists():
        raise refusal(f"Member `{_shown(member.name)}` appears twice.")
    source = tar.extractfile(member)
    assert source is not None  # a regular member always has data
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with source, os.fdopen(os.open(target, flags, FILE_MODE), "wb") as out:
        os.chmod(out.fileno(), FILE_MODE)
        while data := source.read(min(COPY_SIZE, stream.content_left() + 1)):
            stream.count_content(len(data), member.name)
            out.write(data)


def _member_path(member: tarfile.TarInfo, root: Path) -> PurePosixPath | None:
    """The member's path relative to `root` (None for the root itself), or a refusal for a
    name or a type that is not allowed."""
    name = member.name
    shown = _shown(name)
    if not name:
        raise refusal("An archive member has an empty name.")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise refusal(f"Member `{shown}` has a name that is not UTF-8.") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise refusal(f"Member `{shown}` has control characters in its name.")
    if name.startswith("/"):
        raise refusal(f"Member `{shown}` has an absolute path.")
    if "\\" in name:
        raise refusal(f"Member `{shown}` has a backslash in its name.")
    segments = name.split("/")
    if ".." in segments:
        raise refusal(f"Member `{shown}` has a `..` component: it would land outside the adapter.")
    if len(encoded) > MAX_NAME_BYTES or any(
        len(s.encode("utf-8")) > MAX_COMPONENT_BYTES for s in segments
    ):
        raise refusal(f"Member `{shown}` has a name that is too long.")
    if member.issparse():
        raise refusal(f"Member `{shown}` is a sparse file; only regular files are accepted.")
    if not (member.isreg() or member.isdir()):
        kind = REFUSED_TYPES.get(member.type, f"of unknown type `{member.type.decode('latin-1')}`")
        raise refusal(
            f"Member `{shown}` is {kind}; only regular files and directories are accepted."
        )
    parts = [s for s in segments if s not in ("", ".")]
    if not parts:
        if member.isreg():
            raise refusal(f"Member `{shown}` is a file without a name.")
        return None
    path = PurePosixPath(*parts)
    resolved = root.resolve()
    if not resolved.joinpath(*parts).resolve().is_relative_to(resolved):
        raise refusal(f"Member `{shown}` would resolve outside the adapter.")
    return path


def _make_parents(folder: Path, name: str) -> None:
    """Create `folder` and the directories above it (0o755) that the archive did not list."""
    if folder.is_dir():
        return
    if folder.exists():
        raise refusal(f"Member `{_shown(name)}` is inside a file of the archive.")
    _make_parents(folder.parent, name)
    _make_dir(folder)


def _make_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE)
    path.chmod(DIR_MODE)


def _shown(name: str) -> str:
    """A member name as it appears in a message: control characters escaped, long names cut."""
    safe = "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in name[:200])
    return safe + ("…" if len(name) > 200 else "")


# Export.


class _GzipChunker:
    """Gzips the tar bytes it is fed and hands them out in chunks of `chunk_size` bytes."""

    def __init__(self, chunk_size: int):
        self._gzip = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, 31)
        self._buffer = bytearray()
        self._chunk_size = chunk_size
        self.tar_bytes = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.tar_bytes += len(data)
        self._buffer += self._gzip.compress(data)
        return self._take(final=False)

    def finish(self) -> list[bytes]:
        self._buffer += self._gzip.flush()
        return self._take(final=True)

    def _take(self, final: bool) -> list[bytes]:
        size = self._chunk_size
        ready = len(self._buffer) if final else len(self._buffer) - len(self._buffer) % size
        chunks = [bytes(self._buffer[i : min(i + size, ready)]) for i in range(0, ready, size)]
        del self._buffer[:ready]
        return chunks


def _walk(folder: Path, name: str) -> Iterator[tuple[Path, str, bool]]:
    """`folder` and the directories and regular files under it, without following links:
    (path, name in the archive, is a directory), sorted by name, a directory first."""
    yield folder, name, True
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        mode = entry.lstat().st_mode
        if stat.S_ISDIR(mode):
            yield from _walk(entry, f"{name}/{entry.name}")
        elif stat.S_ISREG(mode):
            yield entry, f"{name}/{entry.name}", False


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
