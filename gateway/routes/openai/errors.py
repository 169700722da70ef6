"""OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from gateway.errors import ContextExceeded, GatewayError
from gateway.routes.problems import http_detail, validation_problem

log = logging.getLogger("gateway.openai")

_STATUS_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


def error_response(
    status: int, message: str, kind: str, param: str | None = None, code: str | int | None = None
) -> Response[dict[str, Any]]:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Response(body, status_code=status)


def on_gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    if isinstance(exc, ContextExceeded):  # OpenAI's wording, which clients look for
        message = (
            f"This model's maximum context length is {exc.context} tokens. However, your "
            f"{exc.param or 'prompt'} resulted in {exc.prompt_tokens} tokens. Please reduce "
            f"the length of the {exc.param or 'prompt'}."
        )
        return error_response(exc.status, message, exc.kind, exc.param, exc.code)
    return error_response(exc.status, exc.message, exc.kind, exc.param, exc.code)


def on_validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    param, message = validation_problem(exc)
    return error_response(400, message, "invalid_request_error", param=param)


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error")
    if exc.status_code >= 500:
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
