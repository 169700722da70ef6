"""The adapters family's errors: Kiln's envelope `{"error": {"code", "message"}}` with
OpenAI's `type` and `param` kept, i.e. OpenAI's error shape (`gateway.routes.openai.errors`)
in which `code` is never null.

A code comes from the error itself (`adapter_not_found`, `invalid_adapter_name`, ...); a
body that does not parse or validate gets the route's own code (its handler's
`opt["invalid_code"]`: Kiln's `adapter_merge_invalid`, `batch_invalid_request`), else
`invalid_request`; any other error without one gets a code for its status.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from gateway.errors import GatewayError
from gateway.routes.openai import errors as openai

INVALID = "invalid_request"
STATUS_CODES = {
    401: "authentication_failed",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    501: "not_supported",
    503: "unavailable",
}


def _coded(request: Request[Any, Any, Any], response: Response[Any]) -> Response[Any]:
    """`response` (OpenAI's shape) with a code filled in where it has none."""
    error = response.content["error"]
    if error["code"] is None:
        status = response.status_code or 500
        if status == 400:
            error["code"] = request.route_handler.opt.get("invalid_code", INVALID)
        else:
            error["code"] = STATUS_CODES.get(status, INVALID if status < 500 else "internal_error")
    return response


def on_gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    return _coded(request, openai.on_gateway_error(request, exc))


def on_validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return _coded(request, openai.on_validation_error(request, exc))


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return _coded(request, openai.on_http_error(request, exc))


def on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _coded(request, openai.on_unexpected_error(request, exc))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    GatewayError: on_gateway_error,
    ValidationException: on_validation_error,
    HTTPException: on_http_error,
    Exception: on_unexpected_error,
}
