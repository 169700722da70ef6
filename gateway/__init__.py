"""The gateway: one server for every local-LLM API dialect, over pluggable backends.

The public API: `hookimpl` for plugins, `Gateway`, `create_app`, the error types.
"""

from gateway.errors import (
    AuthenticationFailed,
    BackendFailure,
    ConfigError,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    ModelNotReady,
    PermissionDenied,
    PluginLoadError,
    Unsupported,
)
from gateway.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "BackendFailure",
    "ConfigError",
    "Gateway",
    "GatewayError",
    "InvalidRequest",
    "ModelNotFound",
    "ModelNotReady",
    "PermissionDenied",
    "PluginLoadError",
    "Unsupported",
    "__version__",
    "create_app",
    "hookimpl",
]


def __getattr__(name: str) -> object:
    # Lazy, so that `from gateway import hookimpl` in a plugin imports no web framework.
    if name == "Gateway":
        from gateway.gateway import Gateway

        return Gateway
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    raise AttributeError(name)
