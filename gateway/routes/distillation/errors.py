"""The distillation family's errors: `{"error": {"code", "message", "type", "param"}}`
(OpenAI's shape with the `code` always set), with OpenTracy's codes: 400 `invalid_config`,
402 `insufficient_credits`, 404 `job_not_found`, 409 `job_already_running`, 500
`training_error`. A code an error carries itself wins; otherwise the status gives it.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from gateway.errors import GatewayError
from gateway.routes.openai import errors as openai

CODES = {
    400: "invalid_config",
    401: "authentication_failed",
    402: "insufficient_credits",
    403: "permission_denied",
    404: "job_not_found",
    405: "method_not_allowed",
    409: "job_already_running",
    413: "request_too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


def _coded(response: Response[Any]) -> Response[Any]:
    error = response.content["error"]
    if error["code"] is None:
        status = response.status_code or 500
        error["code"] = CODES.get(status, "invalid_config" if status < 500 else "training_error")
    return response


def on_gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    return _coded(openai.on_gateway_error(request, exc))


def on_validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return _coded(openai.on_validation_error(request, exc))


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return _coded(openai.on_http_error(request, exc))


def on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _coded(openai.on_unexpected_error(request, exc))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    GatewayError: on_gateway_error,
    ValidationException: on_validation_error,
    HTTPException: on_http_error,
    Exception: on_unexpected_error,
}
