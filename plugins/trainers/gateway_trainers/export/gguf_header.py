"""The scalar metadata of a GGUF file, read without parsing its arrays into objects.

`gguf.GGUFReader` builds every value of every key, 100,000 vocabulary and merge strings
included (seconds for a small model); a submission check needs two scalars. This reads
the header and key-values in order, skipping array contents by their lengths.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

MAGIC = b"GGUF"
SCALARS: dict[int, str] = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
STRING = 8
ARRAY = 9

Scalar = int | float | bool | str


def read_scalars(path: Path) -> dict[str, Scalar]:
    """Every non-array key-value of the GGUF file at `path`. ValueError when it is not a
    GGUF file of version 2 or later, or is cut short."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _Scanner(data).scalars()


class _Scanner:
    """A cursor over the bytes of a GGUF header."""

    def __init__(self, data: mmap.mmap):
        self.data = data
        self.at = 0

    def scalars(self) -> dict[str, Scalar]:
        if self.data[:4] != MAGIC:
            raise ValueError("not a GGUF file")
        self.at = 4
        version = self.unpack("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        self.unpack("<Q")  # tensor count
        count = self.unpack("<Q")
        found: dict[str, Scalar] = {}
        for _ in range(count):
            key = self.string()
            kind = self.unpack("<I")
            if kind == ARRAY:
                self.skip_array()
            else:
                found[key] = self.value(kind)
        return found

    def unpack(self, fmt: str) -> int:
        try:
            (value,) = struct.unpack_from(fmt, self.data, self.at)
        except struct.error as exc:
            raise ValueError("the GGUF header is cut short") from exc
        self.at += struct.calcsize(fmt)
        return int(value)

    def value(self, kind: int) -> Scalar:
        if kind == STRING:
            return self.string()
        fmt = SCALARS.get(kind)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {kind}")
        try:
            (value,) = struct.unpack_from(fmt, self.data, self.at)
        except struct.error as exc:
            raise ValueError("the GGUF header is cut short") from exc
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.unpack("<Q")
        raw = self.data[self.at : self.at + size]
        if len(raw) != size:
            raise ValueError("the GGUF header is cut short")
        self.at += size
        return raw.decode("utf-8", errors="replace")

    def skip_array(self) -> None:
        kind = self.unpack("<I")
        length = self.unpack("<Q")
        if kind == STRING:
            for _ in range(length):
                size = self.unpack("<Q")
                self.at += size
        elif kind == ARRAY:
            for _ in range(length):
                self.skip_array()
        elif kind in SCALARS:
            self.at += length * struct.calcsize(SCALARS[kind])
        else:
            raise ValueError(f"unknown GGUF array type {kind}")
