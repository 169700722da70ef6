"""Server-sent events, incrementally: bytes in, the `data` of each complete event out."""

from __future__ import annotations


class SseParser:
    """Splits a byte stream into events (a blank line ends one) and returns each event's
    `data` lines joined by newlines. Comments and the other fields are skipped."""

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of the events that `chunk` completes, in order."""
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        events: list[bytes] = []
        for line in lines:
            self._line(line.rstrip(b"\r"), events)
        return events

    def close(self) -> list[bytes]:
        """The data of an event the stream ended without closing (no final blank line)."""
        events: list[bytes] = []
        if self._rest:
            self._line(self._rest.rstrip(b"\r"), events)
            self._rest = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
