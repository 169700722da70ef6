"""Reading `POST /api/finetune/start`: form fields (urlencoded or multipart, with the
dataset file in `dataset_file` or `file`) or a JSON object, into `FinetuneStart`.

As FastAPI's `Form(...)` parameters do, form values are coerced from text ("3", "true"),
an empty value counts as absent, and a missing or mistyped field is a 422 naming it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import msgspec
from gateway_schemas.training import FinetuneStart
from litestar import Request
from litestar.datastructures import UploadFile
from litestar.openapi.spec import Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

from gateway.errors import InvalidRequest
from gateway.routes.training import datasets as ds
from gateway.routes.training.errors import Unprocessable

UPLOAD_FIELDS = ("dataset_file", "file")
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")
_OPENAPI_TYPES = {
    msgspec.inspect.IntType: OpenAPIType.INTEGER,
    msgspec.inspect.FloatType: OpenAPIType.NUMBER,
    msgspec.inspect.BoolType: OpenAPIType.BOOLEAN,
}


@dataclass
class StartForm:
    fields: FinetuneStart
    dataset_name: str
    """What the job records as its dataset: `dataset`, else the upload's file name."""
    upload: tuple[str, bytes] | None
    """The uploaded file's name and bytes."""


async def read_start_form(request: Request[Any, Any, Any]) -> StartForm:
    media, _ = request.content_type
    upload: tuple[str, bytes] | None = None
    if media in FORMS:
        raw, upload = await _form(request)
    elif media == "application/json" or not await request.body():
        raw = _json(await request.body())
    else:
        raise InvalidRequest(
            f"Send form fields or a JSON object (got Content-Type `{media}`).", param="body"
        )
    fields = _convert(raw)
    if not fields.use_lora:
        raise InvalidRequest(
            "Only LoRA fine-tunes are run here: `use_lora` must be true (a full fine-tune "
            "would rewrite the served model).",
            param="use_lora",
        )
    if upload is None and not fields.dataset:
        raise Unprocessable(
            "Missing required field `dataset` (a file of the datasets folder), or upload the "
            "dataset file in the form field `dataset_file`.",
            param="dataset",
        )
    name = fields.dataset or (upload[0] if upload else "")
    return StartForm(fields=fields, dataset_name=name, upload=upload)


async def _form(request: Request[Any, Any, Any]) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    form = await request.form()
    raw: dict[str, Any] = {}
    upload: tuple[str, bytes] | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key in UPLOAD_FIELDS and upload is None:
                upload = await _read_upload(value)
            await value.close()
        elif key not in raw and value != "":
            raw[key] = value
    for key in UPLOAD_FIELDS:
        if upload is None and isinstance(raw.get(key), str):
            raise Unprocessable(
                f"`{key}` must be a file (the dataset), not a text field.", param=key
            )
    return raw, upload


async def _read_upload(file: UploadFile) -> tuple[str, bytes]:
    name = PurePosixPath((file.filename or "").replace("\\", "/")).name
    if not name:
        raise InvalidRequest("The uploaded dataset has no file name.", param="dataset_file")
    ds.check_format(name)
    content = await file.read()
    if len(content) > ds.MAX_BYTES:
        raise InvalidRequest(
            f"The uploaded dataset is larger than {ds.MAX_BYTES} bytes.", param="dataset_file"
        )
    return name, content


def _json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Unprocessable(f"JSON decode error: {exc}.", param="body") from None
    if not isinstance(value, dict):
        raise Unprocessable("The JSON body must be an object of fields.", param="body")
    return value


def _convert(raw: dict[str, Any]) -> FinetuneStart:
    try:
        return msgspec.convert(raw, FinetuneStart, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        missing = re.search(r"missing required field `([^`]+)`", message)
        if missing:
            field = missing.group(1)
            raise Unprocessable(f"Missing required field `{field}`.", param=field) from None
        where = re.search(r" - at `\$\.([^`\[]+)", message)
        field = where.group(1) if where else None
        reason = re.sub(r" - at `\$[^`]*`$", "", message)
        raise Unprocessable(
            f"Invalid value for `{field}`: {reason}." if field else f"Invalid body: {reason}.",
            param=field,
        ) from None


def start_schema(*, upload: bool = False) -> Schema:
    """The start route's fields as an OpenAPI schema (with the file field for `upload`)."""
    info = msgspec.inspect.type_info(FinetuneStart)
    assert isinstance(info, msgspec.inspect.StructType)
    properties: dict[str, Any] = {}
    for field in info.fields:
        kind = field.type
        if isinstance(kind, msgspec.inspect.UnionType):
            kind = next(t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType))
        properties[field.name] = Schema(type=_OPENAPI_TYPES.get(type(kind), OpenAPIType.STRING))
    if upload:
        properties["dataset_file"] = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
    required = [f.name for f in info.fields if f.required]
    return Schema(type=OpenAPIType.OBJECT, properties=properties, required=required)
