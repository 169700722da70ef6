"""KoboldAI's error shape: `{"detail": {"msg", "type"}}` (ServerBusyError and BasicError in
koboldcpp-openapi.json), with the HTTP status saying what went wrong. A refused story save
also carries KoboldCpp's own `{"success": false, "error"}`, which KoboldAI Lite shows."""

from __future__ import annotations

import logging
from typing import Any

from gateway_schemas.kobold import BasicError, ErrorResponse
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from gateway.errors import GatewayError, InvalidRequest
from gateway.routes.problems import http_detail, validation_problem

log = logging.getLogger("gateway.kobold")

_TYPES = {
    400: "bad_input",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found",
    405: "bad_input",
    501: "not_implemented",
    503: "service_unavailable",
}


class StoryRefused(InvalidRequest):
    """A story the server will not keep (a bad save slot, no story, too long)."""


def error_response(status: int, message: str, kind: str | None = None) -> Response[Any]:
    body = ErrorResponse(detail=BasicError(msg=message, type=kind or _TYPES.get(status, "error")))
    return Response(body, status_code=status)


def on_gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    if exc.status >= 500 and exc.status not in (501, 503):
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(exc.status, exc.message, "server_error")
    return error_response(exc.status, exc.message)


def on_story_refused(request: Request[Any, Any, Any], exc: StoryRefused) -> Response[Any]:
    detail = {"msg": exc.message, "type": _TYPES[exc.status]}
    return Response(
        {"success": False, "error": exc.message, "detail": detail}, status_code=exc.status
    )


def on_validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return error_response(400, validation_problem(exc)[1])


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return error_response(exc.status_code, http_detail(exc))


def on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"Internal server error ({type(exc).__name__}).", "server_error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    StoryRefused: on_story_refused,
    GatewayError: on_gateway_error,
    ValidationException: on_validation_error,
    HTTPException: on_http_error,
    Exception: on_unexpected_error,
}
