"""The training family's two error shapes.

Kiln's routes answer in Kiln's envelope `{"error": {"code", "message", ...}}`, exactly as
the adapters family does (`gateway.routes.adapters.errors`); NPU-STACK's answer as FastAPI
does, `{"detail": "..."}` with the status saying what went wrong (422: a field is missing
or has the wrong type). A full queue (503) also sends `Retry-After: 30`, as Kiln does.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from gateway.errors import GatewayError, Unavailable
from gateway.routes.adapters import errors as kiln
from gateway.routes.problems import http_detail, validation_problem

log = logging.getLogger("gateway.training")

RETRY_AFTER = "30"


class Unprocessable(GatewayError):
    """A form or JSON field that is missing or of the wrong type (FastAPI's 422)."""

    status = 422
    kind = "invalid_request_error"


def _retry_later(response: Response[Any], exc: GatewayError) -> Response[Any]:
    if isinstance(exc, Unavailable):
        response.headers["Retry-After"] = RETRY_AFTER
    return response


# ---- Kiln ---------------------------------------------------------------------------------


def on_kiln_gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    return _retry_later(kiln.on_gateway_error(request, exc), exc)


KILN_HANDLERS: ExceptionHandlersMap = {
    **kiln.EXCEPTION_HANDLERS,
    GatewayError: on_kiln_gateway_error,
}


# ---- NPU-STACK ----------------------------------------------------------------------------


def detail(status: int, message: str) -> Response[Any]:
    return Response({"detail": message}, status_code=status)


def on_npu_gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    if exc.status >= 500 and exc.status != 503:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return _retry_later(detail(exc.status, exc.message), exc)


def on_npu_validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[Any]:
    return detail(422, validation_problem(exc)[1])


def on_npu_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return detail(exc.status_code, http_detail(exc))


def on_npu_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return detail(500, f"Internal server error ({type(exc).__name__}).")


NPU_HANDLERS: ExceptionHandlersMap = {
    GatewayError: on_npu_gateway_error,
    ValidationException: on_npu_validation_error,
    HTTPException: on_npu_http_error,
    Exception: on_npu_unexpected_error,
}
