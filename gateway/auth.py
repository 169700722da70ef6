"""API keys and scopes: the built-in `actor_from_request` and `permission_allowed` plugin.

With no keys configured the server is open (and says so at start-up). With keys, every
mounted route but the public ones needs a key with the route's scope (the access table,
`gateway.routes.access`), sent as llama-server takes it: `Authorization: Bearer <key>` or
`X-Api-Key: <key>`. The `admin` scope grants every scope.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import AuthenticationFailed
from gateway.hookspecs import hookimpl

if TYPE_CHECKING:
    from litestar import Request

    from gateway.gateway import Gateway


class Actor(msgspec.Struct, kw_only=True, frozen=True):
    """Who made a request: an API key's name and scopes, or what a plugin says."""

    id: str
    scopes: frozenset[str] = frozenset()


_ACTOR: ContextVar[Actor | None] = ContextVar("gateway_actor", default=None)


@contextmanager
def acting(actor: Actor | None) -> Iterator[None]:
    """Make `actor` the current HTTP request's actor inside this block (and its tasks)."""
    token = _ACTOR.set(actor)
    try:
        yield
    finally:
        _ACTOR.reset(token)


def current_actor() -> Actor | None:
    """The actor of the HTTP request being served (None: anonymous, or outside one); the
    generation service makes its id the tenant of a request that names none."""
    return _ACTOR.get()


def request_key(request: Request[Any, Any, Any]) -> str | None:
    """The API key a request sends: `Authorization: Bearer`, else `X-Api-Key`."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip() or None


@hookimpl(trylast=True)
def actor_from_request(gateway: Gateway, request: Request[Any, Any, Any]) -> Actor | None:
    keys = gateway.settings.api_keys
    token = request_key(request)
    if not keys or token is None:
        return None
    for index, key in enumerate(keys):
        if hmac.compare_digest(key.key.encode(), token.encode()):
            return Actor(id=key.name or f"key-{index}", scopes=frozenset(key.scopes))
    raise AuthenticationFailed("Invalid API key.", code="invalid_api_key")


@hookimpl(trylast=True)
def permission_allowed(gateway: Gateway, actor: Actor | None, scope: str) -> bool | None:
    if not gateway.settings.api_keys:
        return True
    if actor is None:
        return None
    return scope in actor.scopes or "admin" in actor.scopes or None
