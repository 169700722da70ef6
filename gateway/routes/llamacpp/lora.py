"""llama-server's LoRA adapters over the model's adapter store: `GET/POST /lora-adapters`,
the per-request `lora` field, and `generation_settings.lora`.

llama-server numbers the adapters it loaded at start-up. Here an adapter's id is its
position in the store's names, sorted by name (`AdapterStore.names()`), so ids move when
adapters are added or removed: read them from `GET /lora-adapters` before using them. An
adapter's `path` is its name, its `scale` the one it has in the server default (0 when it
is not part of it). A model that does not serve adapters has none.

A `lora` list names exactly the adapters a request runs with: one not listed, or listed
with scale 0, is not applied (llama-server's rule), so `[]` is the base model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway_schemas.canonical import AdapterRef

from gateway.adapters import served
from gateway.engine import Capability
from gateway.errors import InvalidRequest

if TYPE_CHECKING:
    from gateway_schemas.llamacpp import LoraScale

    from gateway.engine import Backend


def names(backend: Backend) -> list[str]:
    """The adapters of `backend`'s model, by id."""
    if Capability.ADAPTERS not in backend.capabilities:
        return []
    return backend.adapters.names()


def listing(backend: Backend) -> list[dict[str, Any]]:
    """`GET /lora-adapters`: `[{"id", "path", "scale"}]`."""
    known = names(backend)
    default = {ref.name: ref.scale for ref in backend.adapters.default()} if known else {}
    return [
        {"id": index, "path": name, "scale": default.get(name, 0.0)}
        for index, name in enumerate(known)
    ]


def refs(
    backend: Backend, entries: list[LoraScale], param: str | None = "lora"
) -> list[AdapterRef]:
    """The adapters `entries` apply (scale 0 left out), in the order given; an id that is
    not an adapter's, or one given twice, is a 400 naming it."""
    known = names(backend)
    where = f" in `{param}`" if param else ""
    unknown = [entry.id for entry in entries if not 0 <= entry.id < len(known)]
    if unknown:
        listed = ", ".join(str(i) for i in unknown)
        have = f"ids are 0 to {len(known) - 1}" if known else "no LoRA adapters are loaded"
        raise InvalidRequest(
            f"Invalid adapter id(s){where}: {listed} ({have}; see GET /lora-adapters).",
            param=param,
        )
    given = [entry.id for entry in entries]
    twice = sorted({i for i in given if given.count(i) > 1})
    if twice:
        raise InvalidRequest(
            f"Adapter id(s) given more than once{where}: {', '.join(str(i) for i in twice)}.",
            param=param,
        )
    return [AdapterRef(name=known[e.id], scale=e.scale) for e in entries if e.scale != 0.0]


def requested(backend: Backend, entries: list[LoraScale] | None) -> list[AdapterRef] | None:
    """A request's `lora` as canonical adapters; None (absent) lets the server default serve."""
    return None if entries is None else refs(backend, entries)


def set_default(backend: Backend, entries: list[LoraScale]) -> None:
    """`POST /lora-adapters`: the listed adapters (scale 0 left out) become the server
    default; an adapter not listed is not part of it."""
    chosen = refs(backend, entries, param=None)
    if Capability.ADAPTERS in backend.capabilities:
        backend.adapters.set_default(chosen)


def ids(backend: Backend, adapters: list[AdapterRef]) -> list[dict[str, Any]]:
    """`[{"id", "scale"}]` of `adapters` (an adapter removed meanwhile is left out)."""
    index = {name: i for i, name in enumerate(names(backend))}
    return [{"id": index[r.name], "scale": r.scale} for r in adapters if r.name in index]


def served_ids(backend: Backend) -> list[dict[str, Any]]:
    """`generation_settings.lora`: the adapters that served this HTTP request's (first)
    generation."""
    return ids(backend, served.first() or [])


def default_ids(backend: Backend) -> list[dict[str, Any]]:
    """The server default as `[{"id", "scale"}]` (/props' default generation settings)."""
    return ids(backend, backend.adapters.default()) if names(backend) else []
