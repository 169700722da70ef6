"""Typed errors. Code raises them; each route family renders them in its own wire shape."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error a client may see. `status` is the HTTP status it maps to."""

    status: int = 500
    kind: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(GatewayError):
    status = 400
    kind = "invalid_request_error"


class Unsupported(GatewayError):
    """The model or backend cannot do what was asked (a capability it lacks)."""

    status = 400
    kind = "invalid_request_error"


class ContextExceeded(InvalidRequest):
    """The prompt does not fit the context a sequence gets."""

    def __init__(self, message: str, *, prompt_tokens: int, context: int, param: str):
        super().__init__(message, param=param, code="context_length_exceeded")
        self.prompt_tokens = prompt_tokens
        self.context = context


class NotSupported(GatewayError):
    """An endpoint the server has but is switched off, or a capability nobody provides."""

    status = 501
    kind = "not_supported_error"


class ModelNotFound(GatewayError):
    status = 404
    kind = "invalid_request_error"

    def __init__(self, name: str, served: list[str] | None = None):
        listed = ", ".join(f"`{n}`" for n in served or []) or "none"
        super().__init__(
            f"The model `{name}` does not exist. Served models: {listed}.",
            param="model",
            code="model_not_found",
        )


class NotFound(GatewayError):
    """A named thing (an adapter, a job) that does not exist."""

    status = 404
    kind = "not_found_error"


class InsufficientCredits(GatewayError):
    """What the request would spend exceeds what its tenant has left (a budget)."""

    status = 402
    kind = "insufficient_credits"


class Conflict(GatewayError):
    """The request clashes with the current state (a name taken, a resource in use)."""

    status = 409
    kind = "conflict_error"


class ModelNotReady(GatewayError):
    status = 503
    kind = "unavailable_error"


class Unavailable(GatewayError):
    """The server cannot take this now (a full queue); the client may retry later."""

    status = 503
    kind = "unavailable_error"


class AuthenticationFailed(GatewayError):
    status = 401
    kind = "authentication_error"


class PermissionDenied(GatewayError):
    status = 403
    kind = "permission_error"


class BackendFailure(GatewayError):
    """The backend failed while serving a valid request: a bug or a broken model."""

    status = 500
    kind = "server_error"


class UpstreamFailure(GatewayError):
    """An upstream API (a teacher proxy's provider) failed or answered with a server error,
    after retries and fallbacks: the message carries the upstream's own."""

    status = 502
    kind = "upstream_error"


class UpstreamTimeout(GatewayError):
    """An upstream API did not answer in time, after retries and fallbacks."""

    status = 504
    kind = "timeout_error"


class ConfigError(Exception):
    """Settings or plugins that the gateway refuses to start with."""


class PluginLoadError(ConfigError):
    pass
