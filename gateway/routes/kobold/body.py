"""Request bodies read the way KoboldCpp reads them.

KoboldCpp takes each field with `genparams.get(name, default)` and converts numbers with
its `tryparseint` / `tryparsefloat`: a missing field, a `null` or a string that does not
parse gives the field's default, and `int()` / `float()` do the rest (`2.0` and `"2"` are
2 for an integer, `2.7` is 2, `true` is 1; any number is fine where a float is expected).
Frontends rely on it: KoboldAI Lite and SillyTavern send `"mirostat": 0.0`,
`"dry_allowed_length": 2.0` and numbers as strings.

`read_body` does the same for any msgspec Struct, driven by the Struct's own types
(`msgspec.inspect`): each declared field goes through the reader registered for its kind
(a `null` is the default, except where the field's type admits null: there it is null, as
for the gateway's `adapter: null`, the base model), then `msgspec.convert(..., strict=False)` builds the Struct, which also reads `"true"` as
a boolean. What KoboldCpp itself cannot read (a list where a number belongs, a number where
text belongs, a body that is not a JSON object) stays a 400. Integers saturate at the
range of a C `int`, where KoboldCpp stores them. Unknown fields are ignored, as KoboldCpp
ignores them (`model` among them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi
from litestar.params import Body

from gateway.errors import InvalidRequest

T = TypeVar("T", bound=msgspec.Struct)

INT_MIN, INT_MAX = -(2**31), 2**31 - 1


class _Default:
    """A value that reads as "not given": the field keeps its default."""


DEFAULT = _Default()
Reader = Callable[[Any], Any]


def read_int(value: Any) -> Any:
    """KoboldCpp's `tryparseint`: `int(value)`, or the default when `int()` refuses text."""
    if isinstance(value, bool | int):
        return min(max(int(value), INT_MIN), INT_MAX)
    if isinstance(value, float):
        return read_int(int(value)) if math.isfinite(value) else DEFAULT
    if isinstance(value, str):
        try:
            return read_int(int(value))
        except ValueError:
            return DEFAULT
    return value  # a list or an object: msgspec refuses it, as int() would


def read_float(value: Any) -> Any:
    """KoboldCpp's `tryparsefloat`; non-finite values (`1e999`, `"nan"`) are the default."""
    if isinstance(value, bool | int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return DEFAULT
    else:
        return value
    return number if math.isfinite(number) else DEFAULT


def read_bool(value: Any) -> Any:
    """Numbers by their truth, as KoboldCpp's `if flag:`; text is left to msgspec, which
    reads "true"/"false"/"1"/"0"."""
    return value != 0 if isinstance(value, int | float) and not isinstance(value, bool) else value


def read_int_list(value: Any) -> Any:
    """Integers saturate; anything else is left to msgspec, which reads `2.0` and `"2"`
    and refuses `2.5` (KoboldCpp does not `int()` list items: ctypes refuses floats)."""
    if isinstance(value, list):
        return [read_int(item) if type(item) is int else item for item in value]
    return value


READERS: dict[type[mi.Type], Reader] = {
    mi.IntType: read_int,
    mi.FloatType: read_float,
    mi.BoolType: read_bool,
}


def _reader(kind: mi.Type) -> Reader | None:
    if isinstance(kind, mi.UnionType):
        readers = [r for member in kind.types if (r := _reader(member)) is not None]
        return readers[0] if len(readers) == 1 else None
    if isinstance(kind, mi.ListType) and isinstance(kind.item_type, mi.IntType):
        return read_int_list
    return READERS.get(type(kind))


def _nullable(kind: mi.Type) -> bool:
    return isinstance(kind, mi.NoneType) or (
        isinstance(kind, mi.UnionType) and any(isinstance(t, mi.NoneType) for t in kind.types)
    )


@functools.cache
def _fields(kind: type[msgspec.Struct]) -> tuple[tuple[str, Reader | None, bool], ...]:
    """Each field's name, reader, and whether its type admits null."""
    info = mi.type_info(kind)
    assert isinstance(info, mi.StructType)
    return tuple((f.encode_name, _reader(f.type), _nullable(f.type)) for f in info.fields)


def read_body(raw: object, kind: type[T], *, optional: bool = False) -> T:
    """`raw` (a decoded JSON body; None when there was none, which is all defaults when
    the body is `optional`) as `kind`, read leniently."""
    if raw is None and optional:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    given: dict[str, Any] = {}
    for name, reader, nullable in _fields(kind):
        if name not in raw:
            continue
        value = raw[name]
        if value is None:
            if nullable:
                given[name] = None
            continue  # null where the type has no null: the default
        if reader is not None:
            value = reader(value)
            if value is DEFAULT:
                continue
        given[name] = value
    try:
        return msgspec.convert(given, kind, strict=False)
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `$.")
        field = where.rstrip("`")
        raise InvalidRequest(
            f"Invalid value for `{field}`: {reason}" if field else f"Invalid body: {reason}"
        ) from None


def documented(kind: type[msgspec.Struct]) -> Any:
    """A `Body` marker that documents `kind` in the OpenAPI schema for a handler that takes
    the raw JSON body (`data: Annotated[Any, documented(Kind)] = None`) and reads it with
    `read_body`."""
    schema = msgspec.json.schema(kind)["$defs"][kind.__name__]
    keys = ("title", "description", "type", "properties", "required")
    return Body(schema_extra={k: v for k, v in schema.items() if k in keys})
