"""Which adapters served a response: recorded by the generation service, sent as a header.

Every generation resolves its adapter set (`GenerationService.prepare`) and records it
here; the host middleware opens one record per HTTP request and, when the response starts,
adds `X-Gateway-Adapters` listing what served it, in every route family:
`name@scale` joined by `,` (`none` for the base model), and several generations that
used different sets (a batch, `n` choices) joined by `;`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from gateway_schemas.canonical import AdapterRef

HEADER = "x-gateway-adapters"


@dataclass
class ServedAdapters:
    """The adapter sets the generations of one HTTP request ran with, in first-use order."""

    sets: list[tuple[AdapterRef, ...]] = field(default_factory=list)

    def add(self, refs: list[AdapterRef]) -> None:
        entry = tuple(refs)
        if entry not in self.sets:
            self.sets.append(entry)

    def header(self) -> str | None:
        if not self.sets:
            return None
        return ";".join(describe(list(refs)) for refs in self.sets)


_CURRENT: ContextVar[ServedAdapters | None] = ContextVar("gateway_served_adapters", default=None)


def describe(refs: list[AdapterRef]) -> str:
    """`name@scale,...`, or `none` for the base model."""
    return ",".join(f"{r.name}@{r.scale:g}" for r in refs) or "none"


@contextmanager
def recording() -> Iterator[ServedAdapters]:
    """Collect what the generations started inside this block (and its tasks) used."""
    record = ServedAdapters()
    token = _CURRENT.set(record)
    try:
        yield record
    finally:
        _CURRENT.reset(token)


def record(refs: list[AdapterRef]) -> None:
    """Note that a generation of the current HTTP request runs with `refs`."""
    current = _CURRENT.get()
    if current is not None:
        current.add(refs)


def first() -> list[AdapterRef] | None:
    """The adapters that served the current HTTP request's first generation (for a body
    field); None when no generation ran (or outside a request)."""
    record = _CURRENT.get()
    return list(record.sets[0]) if record is not None and record.sets else None
