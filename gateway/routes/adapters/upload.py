"""`POST /v1/adapters/upload`: a multipart form (`name`, `archive`, optional `model`)
streamed to disk as it arrives, never held in memory, then extracted, checked against the
model and installed.

The archive is written into a staging directory of the adapter store, extracted
(`gateway.adapters.archive.extract_archive`: every path and size checked) into another, checked
by the backend (`check_adapter`: the adapter must fit the model) and renamed into place. Any
refusal leaves nothing behind: both staging directories are removed whatever happens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from litestar import Request
from litestar.exceptions import InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from multipart import (
    MultipartSegment,
    ParserError,
    ParserLimitReached,
    PushMultipartParser,
)

from gateway.adapters.archive import extract_archive
from gateway.adapters.names import check_name
from gateway.adapters.store import CONFIG_FILE, WEIGHTS_FILE
from gateway.errors import Conflict, InvalidRequest
from gateway.gateway import Gateway
from gateway.routes.adapters.bodies import UploadResponse
from gateway.routes.adapters.target import adapter_backend, adapter_store

MAX_UPLOAD_BYTES = 512 * 1024**2
"""The largest archive accepted; a bigger one is refused (413) as soon as that many bytes
have arrived (or at once, when the Content-Length says so)."""
FORM_OVERHEAD = 1024**2
"""What the rest of the form (boundaries, part headers, the text fields) may add."""
MAX_FIELD_BYTES = 4096
"""A text field (`name`, `model`) longer than this is refused."""
MAX_PARTS = 16
WRITE_SIZE = 1024**2
"""Archive bytes gathered before one write to disk (in a worker thread)."""
ARCHIVE_FILE = "upload.tar.gz"
CODE = "adapter_import_invalid"


@dataclass
class UploadForm:
    """What the form held: its text fields and whether the archive part was written."""

    fields: dict[str, str]
    archive: Path | None


def invalid(message: str, param: str = "archive") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=CODE)


def too_large(limit: int) -> RequestEntityTooLarge:
    return RequestEntityTooLarge(detail=f"The upload is larger than {limit} bytes.")


async def upload_adapter(
    request: Request[Any, Any, Any], gateway: Gateway, model: str | None
) -> UploadResponse:
    """Receive, check and install one uploaded adapter. `model` (the query parameter) is
    where the archive is spooled; the form's `model` field, when given, wins."""
    _, spool_store = adapter_store(gateway, model)
    spool = await asyncio.to_thread(spool_store.staging)
    try:
        form = await receive_form(request, spool / ARCHIVE_FILE, MAX_UPLOAD_BYTES)
        if form.archive is None:
            raise invalid("The form has no `archive` field (the adapter's tar.gz file).")
        if "name" not in form.fields:
            raise invalid("The form has no `name` field (the new adapter's name).", "name")
        name = check_name(form.fields["name"])
        _, backend = adapter_backend(gateway, form.fields.get("model") or model)
        store = backend.adapters
        if await asyncio.to_thread(store.exists, name):
            raise Conflict(
                f"An adapter named `{name}` already exists.",
                param="name",
                code="adapter_already_exists",
            )
        staging = await asyncio.to_thread(store.staging)
        try:
            folder = staging / "adapter"
            extracted = await asyncio.to_thread(extract_archive, form.archive, folder)
            missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
            if missing:
                raise invalid(
                    f"The archive holds no adapter: `{'` and `'.join(missing)}` missing "
                    f"(found {', '.join(f'`{f}`' for f in extracted.files[:8])})."
                )
            await backend.check_adapter(folder)
            await asyncio.to_thread(store.install, folder, name)
        finally:
            await asyncio.to_thread(store.discard, staging)
    finally:
        await asyncio.to_thread(spool_store.discard, spool)
    return UploadResponse(name=name, size_bytes=extracted.size_bytes, files=len(extracted.files))


async def receive_form(
    request: Request[Any, Any, Any],
    archive: Path,
    limit: int,
    on_name: Callable[[str], object] = check_name,
) -> UploadForm:
    """Stream the multipart body: the `archive` part into the file `archive`, the text
    fields into memory (bounded); other parts are read and dropped, as Kiln drops them.
    `on_name` checks the `name` field as soon as it is complete (refusing early when it
    comes before the archive)."""
    media, options = request.content_type
    boundary = options.get("boundary")
    if media != "multipart/form-data" or not boundary:
        raise invalid(
            "Send the adapter as multipart/form-data with the fields `name` and `archive` "
            f"(got Content-Type `{media or 'none'}`)."
        )
    announced = request.content_length
    if announced is not None and announced > limit + FORM_OVERHEAD:
        raise too_large(limit)
    form = UploadForm(fields={}, archive=None)
    reader = _FormReader(form, archive, limit, on_name)
    try:
        with PushMultipartParser(boundary, max_segment_count=MAX_PARTS) as parser:
            received = 0
            async for chunk in _body(request):
                received += len(chunk)
                if received > limit + FORM_OVERHEAD:
                    raise too_large(limit)
                for event in parser.parse(chunk):
                    await reader.feed(event)
                if parser.closed:
                    break
    except ParserLimitReached as exc:
        raise invalid(f"The form has too many parts or too large part headers ({exc}).") from None
    except ParserError as exc:
        raise invalid(f"The upload is not valid multipart/form-data: {exc}.") from None
    finally:
        if reader.sink is not None:
            reader.sink.close()
    return form


async def _body(request: Request[Any, Any, Any]) -> Any:
    """The request body's chunks, then `b""` (the end); a client that leaves mid-upload
    is a 400, not a server error."""
    try:
        async for chunk in request.stream():
            yield chunk
    except InternalServerException:  # Litestar's "client disconnected prematurely"
        raise invalid("The upload ended before the form was complete.") from None


class _FormReader:
    """Handles the parser's events for one form."""

    def __init__(
        self, form: UploadForm, archive: Path, limit: int, on_name: Callable[[str], object]
    ):
        self.form, self.archive, self.limit, self.on_name = form, archive, limit, on_name
        self.segment: MultipartSegment | None = None
        self.text = bytearray()
        self.sink: _Sink | None = None

    async def feed(self, event: MultipartSegment | bytes | None) -> None:
        if isinstance(event, MultipartSegment):
            self.segment, self.text = event, bytearray()
            if event.name == "archive":
                if self.sink is not None:
                    raise invalid("The form has more than one `archive` field.")
                self.sink = await asyncio.to_thread(_Sink, self.archive)
            return
        segment = self.segment
        assert segment is not None  # the parser sends a segment before its data
        if event:
            await self._data(segment, event)
            return
        if segment.name == "archive":
            assert self.sink is not None
            await self.sink.flush()
            self.form.archive = self.archive
        elif segment.name in ("name", "model"):
            try:
                value = self.text.decode(segment.charset or "utf-8")
            except (UnicodeDecodeError, LookupError):
                raise invalid(
                    f"The `{segment.name}` field is not UTF-8 text.", segment.name
                ) from None
            self.form.fields[segment.name] = value
            if segment.name == "name":
                self.on_name(value)

    async def _data(self, segment: MultipartSegment, data: bytes) -> None:
        if segment.name == "archive":
            assert self.sink is not None
            if self.sink.size + len(data) > self.limit:
                raise too_large(self.limit)
            await self.sink.write(data)
        elif segment.name in ("name", "model"):
            self.text += data
            if len(self.text) > MAX_FIELD_BYTES:
                raise invalid(
                    f"The `{segment.name}` field is longer than {MAX_FIELD_BYTES} bytes.",
                    segment.name,
                )


class _Sink:
    """A file written in large blocks from a worker thread."""

    def __init__(self, path: Path):
        self._file: IO[bytes] = path.open("wb")
        self._buffer = bytearray()
        self.size = 0

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= WRITE_SIZE:
            await self.flush()

    async def flush(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            await asyncio.to_thread(self._file.write, data)

    def close(self) -> None:
        self._file.close()
