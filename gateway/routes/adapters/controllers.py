"""Kiln's adapter routes: list, load (the server default), unload, delete, download,
upload and merge the LoRA adapters of a model's store.

Every route manages one model's adapters: the one named by `model` (query parameter on
GET and DELETE, body field on POST, form field on upload), else the first model that
serves adapters. Reading routes need the `inference` scope, the others `adapters`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from gateway_schemas.canonical import AdapterRef
from gateway_schemas.openai import AdapterIn, ErrorResponse
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Stream

from gateway.adapters.archive import archive_chunks
from gateway.adapters.names import check_name
from gateway.errors import Conflict, InvalidRequest
from gateway.gateway import Gateway
from gateway.routes.adapters import upload as up
from gateway.routes.adapters.bodies import (
    AdapterInfo,
    AdapterList,
    DeleteResponse,
    LoadRequest,
    LoadResponse,
    MergeRequest,
    MergeResponse,
    UnloadRequest,
    UnloadResponse,
    UploadResponse,
)
from gateway.routes.adapters.target import adapter_backend, adapter_store

DOWNLOAD_CHUNK = 1024**2
MERGE_CODE = "adapter_merge_invalid"
ERRORS = {
    400: ResponseSpec(ErrorResponse, description="Invalid request"),
    404: ResponseSpec(ErrorResponse, description="Unknown model or adapter"),
    503: ResponseSpec(ErrorResponse, description="Model still loading"),
}
CONFLICT = {409: ResponseSpec(ErrorResponse, description="The name is taken or in use")}


def active_name(refs: list[AdapterRef]) -> str | None:
    """The default as one name: the adapter's, `a+b` for a composition, None for base."""
    return "+".join(ref.name for ref in refs) or None


def _refs_out(refs: list[AdapterRef]) -> list[AdapterIn]:
    return [AdapterIn(name=ref.name, scale=ref.scale) for ref in refs]


def _load_refs(data: LoadRequest) -> list[AdapterRef]:
    """The adapters a load request names: `name` (with `scale`) or `adapters`."""
    if data.adapters is not None and data.name is not None:
        raise InvalidRequest(
            "Give either `name` or `adapters`, not both.",
            param="adapters",
            code="invalid_compose_request",
        )
    if data.adapters is not None:
        if not data.adapters:
            raise InvalidRequest(
                "`adapters` is empty: name at least one (`POST /v1/adapters/unload` serves "
                "the base model).",
                param="adapters",
                code="invalid_compose_request",
            )
        return [
            AdapterRef(name=check_name(a.name, f"adapters[{i}].name"), scale=a.scale)
            for i, a in enumerate(data.adapters)
        ]
    if data.name is None:
        raise InvalidRequest(
            "Name the adapter to load in `name` (or several in `adapters`).", param="name"
        )
    return [AdapterRef(name=check_name(data.name), scale=data.scale)]


@dataclass
class _UploadOperation(Operation):
    """The upload's OpenAPI operation: its multipart form, which the handler reads itself
    (streamed to disk) and so does not declare as a parameter."""

    def __post_init__(self) -> None:
        text = Schema(type=OpenAPIType.STRING)
        form = Schema(
            type=OpenAPIType.OBJECT,
            properties={
                "name": text,
                "archive": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                "model": text,
            },
            required=["name", "archive"],
        )
        self.request_body = RequestBody(
            content={"multipart/form-data": OpenAPIMediaType(schema=form)}, required=True
        )


class AdapterController(Controller):
    path = "/v1/adapters"

    @get("/", responses={200: ResponseSpec(AdapterList), **ERRORS})
    async def list_adapters(
        self, gateway: NamedDependency[Gateway], model: FromQuery[str | None] = None
    ) -> AdapterList:
        name, store = adapter_store(gateway, model)
        entries, default = await asyncio.to_thread(lambda: (store.entries(), store.default()))
        return AdapterList(
            active=active_name(default),
            available=[AdapterInfo(**asdict(entry)) for entry in entries],
            default=_refs_out(default),
            model=name,
        )

    @post("/load", status_code=200, responses=ERRORS)
    async def load(
        self, data: JSONBody[LoadRequest], gateway: NamedDependency[Gateway]
    ) -> LoadResponse:
        refs = _load_refs(data)
        name, backend = adapter_backend(gateway, data.model)
        store = backend.adapters
        checked = await asyncio.to_thread(
            store.resolve, refs, "adapters" if data.adapters else "name"
        )
        for ref in checked:
            await backend.check_adapter(await asyncio.to_thread(store.path, ref.name))
        default = await asyncio.to_thread(store.set_default, checked)
        return LoadResponse(
            name=active_name(default) or "", adapters=_refs_out(default), model=name
        )

    @post("/unload", status_code=200, responses=ERRORS)
    async def unload(
        self, gateway: NamedDependency[Gateway], data: JSONBody[UnloadRequest | None] = None
    ) -> UnloadResponse:
        name, store = adapter_store(gateway, data.model if data else None)
        await asyncio.to_thread(store.set_default, [])
        return UnloadResponse(model=name)

    @delete("/{name:str}", status_code=200, responses={**ERRORS, **CONFLICT})
    async def delete_adapter(
        self,
        gateway: NamedDependency[Gateway],
        name: FromPath[str],
        model: FromQuery[str | None] = None,
    ) -> DeleteResponse:
        served, store = adapter_store(gateway, model)
        removed = await asyncio.to_thread(store.delete, name)
        backend = gateway.models.handle(served).backend
        for victim in removed:
            backend.adapters_changed(victim)
        return DeleteResponse(name=name)

    @get(
        "/{name:str}/download",
        responses={
            200: ResponseSpec(
                bytes,
                description="The adapter's directory as a tar.gz",
                media_type="application/gzip",
            ),
            **ERRORS,
        },
    )
    async def download(
        self,
        gateway: NamedDependency[Gateway],
        name: FromPath[str],
        model: FromQuery[str | None] = None,
    ) -> Stream:
        _, store = adapter_store(gateway, model)
        folder = await asyncio.to_thread(store.path, name)
        return Stream(
            _in_thread(archive_chunks(folder, name, DOWNLOAD_CHUNK)),
            media_type="application/gzip",
            headers={"Content-Disposition": f'attachment; filename="{name}.tar.gz"'},
        )

    @post(
        "/upload",
        status_code=200,
        request_max_body_size=up.MAX_UPLOAD_BYTES + up.FORM_OVERHEAD,
        operation_class=_UploadOperation,
        responses={**ERRORS, **CONFLICT, 413: ResponseSpec(ErrorResponse, description="Too large")},
    )
    async def upload(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[Gateway],
        model: FromQuery[str | None] = None,
    ) -> UploadResponse:
        return await up.upload_adapter(request, gateway, model)

    @post(
        "/merge",
        status_code=200,
        opt={"invalid_code": MERGE_CODE},
        responses={**ERRORS, **CONFLICT},
    )
    async def merge(
        self, data: JSONBody[MergeRequest], gateway: NamedDependency[Gateway]
    ) -> MergeResponse:
        _check_merge(data)
        _, backend = adapter_backend(gateway, data.model)
        store = backend.adapters
        sources = [
            (await asyncio.to_thread(store.path, s.name, f"sources[{i}].name"), s.weight)
            for i, s in enumerate(data.sources)
        ]
        if await asyncio.to_thread(store.exists, data.output_name):
            raise _output_exists(data.output_name)
        staging = await asyncio.to_thread(store.staging)
        try:
            merged = staging / "merged"
            tensors = await backend.merge_adapters(sources, data.mode, data.density, merged)
            try:
                await asyncio.to_thread(store.install, merged, data.output_name)
            except Conflict:
                raise _output_exists(data.output_name) from None
        finally:
            await asyncio.to_thread(store.discard, staging)
        return MergeResponse(
            output_name=data.output_name, mode=data.mode, sources=data.sources, num_tensors=tensors
        )


def _check_merge(data: MergeRequest) -> None:
    """Kiln's checks of a merge request, before any adapter is read."""
    if not data.sources:
        raise InvalidRequest("A merge needs at least one source.", param="sources", code=MERGE_CODE)
    if data.density is not None and data.mode != "ties":
        raise InvalidRequest(
            f"`density` applies only to mode `ties`, not `{data.mode}`.",
            param="density",
            code=MERGE_CODE,
        )
    if data.density is not None and not 0 < data.density <= 1:
        raise InvalidRequest(
            f"`density` must be in (0, 1]; got {data.density}.", param="density", code=MERGE_CODE
        )
    try:
        check_name(data.output_name, "output_name")
    except InvalidRequest as exc:
        raise InvalidRequest(
            exc.message, param="output_name", code="adapter_merge_bad_name"
        ) from None
    for i, source in enumerate(data.sources):
        check_name(source.name, f"sources[{i}].name")


def _output_exists(name: str) -> Conflict:
    return Conflict(
        f"An adapter named `{name}` already exists; choose another `output_name`.",
        param="output_name",
        code="adapter_merge_output_exists",
    )


async def _in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks` produced in a worker thread, one at a time (the event loop never blocks on
    the disk or on compression); the generator is closed however the stream ends."""
    done = object()
    try:
        while (chunk := await asyncio.to_thread(next, chunks, done)) is not done:
            yield chunk  # type: ignore[misc]
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            # A `next` cancelled mid-way still runs in its thread: then the generator is
            # left to the garbage collector, which closes it the same way.
            with contextlib.suppress(ValueError):  # "generator already executing"
                close()
