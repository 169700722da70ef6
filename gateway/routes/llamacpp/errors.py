"""llama.cpp's error shape: `{"error": {"code", "message", "type"}}`.

Types as llama.cpp's server uses them: `invalid_request_error`, `authentication_error`
(and `permission_error` for a key without the route's scope, which llama.cpp lacks),
`not_found_error`, `not_supported_error`, `unavailable_error`, `server_error`, and
`exceed_context_size_error` (with `n_prompt_tokens` and `n_ctx`).
"""

from __future__ import annotations

import logging
from typing import Any

from gateway_schemas.llamacpp import ErrorBody, ErrorResponse
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap
from msgspec import UNSET

from gateway.errors import ContextExceeded, GatewayError
from gateway.routes.problems import http_detail, validation_problem

log = logging.getLogger("gateway.llamacpp")

CONTEXT_EXCEEDED = "the request exceeds the available context size, try increasing it"
"""llama-server's own words for a prompt that does not fit a slot's context."""

_STATUS_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


def error_response(
    status: int, message: str, kind: str, *, n_prompt_tokens: Any = UNSET, n_ctx: Any = UNSET
) -> Response[ErrorResponse]:
    body = ErrorBody(
        code=status, message=message, type=kind, n_prompt_tokens=n_prompt_tokens, n_ctx=n_ctx
    )
    return Response(ErrorResponse(error=body), status_code=status)


def on_gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    if isinstance(exc, ContextExceeded):
        return error_response(
            400,
            CONTEXT_EXCEEDED,
            "exceed_context_size_error",
            n_prompt_tokens=exc.prompt_tokens,
            n_ctx=exc.context,
        )
    if exc.status >= 500 and exc.status != 501:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    kind = exc.kind if exc.status < 500 or exc.status == 501 else "server_error"
    if exc.status == 401:
        kind = "authentication_error"
    if exc.status == 404:
        kind = "not_found_error"
    return error_response(exc.status, exc.message, kind)


def on_validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return error_response(400, validation_problem(exc)[1], "invalid_request_error")


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error")
    if exc.status_code >= 500 and exc.status_code not in _STATUS_TYPES:
        kind = "server_error"
    return error_response(exc.status_code, http_detail(exc), kind)


def on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"Internal server error ({type(exc).__name__}).", "server_error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    GatewayError: on_gateway_error,
    ValidationException: on_validation_error,
    HTTPException: on_http_error,
    Exception: on_unexpected_error,
}
