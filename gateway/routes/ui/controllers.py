"""`GET /ui`, `GET /ui/static/{name}` and `GET /ui/session` (see the package docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from gateway import __version__
from gateway.auth import request_key
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.gateway import Gateway
from gateway.settings import Scope

STATIC = Path(__file__).with_name("static")
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
SCOPES: tuple[Scope, ...] = ("inference", "adapters", "train", "admin")
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
"""The page may load and call nothing but the gateway."""
HEADERS = {
    "content-security-policy": POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def static_file(name: str) -> Response[bytes]:
    path = STATIC / name
    kind = TYPES.get(path.suffix)
    if kind is None or path.parent != STATIC or not path.is_file():
        raise NotFoundException(f"The dashboard has no file `{name}`.")
    return Response(path.read_bytes(), media_type=f"{kind}; charset=utf-8", headers=HEADERS)


class UiController(Controller):
    path = "/ui"

    @get("/", sync_to_thread=False)
    def page(self) -> Response[bytes]:
        return static_file("index.html")

    @get("/static/{name:str}", sync_to_thread=False)
    def static(self, name: FromPath[str]) -> Response[bytes]:
        return static_file(name)

    @get("/session")
    async def session(
        self, request: Request[Any, Any, Any], gateway: NamedDependency[Gateway]
    ) -> dict[str, Any]:
        """What the key the request sends (or none) may do: the scopes it has, whether
        the page must ask for a key (and why the key it sent was refused), the route
        families mounted. Public, as the page is: a wrong key is said, not a 401."""
        from gateway.app import GatewayPlugin

        scopes: list[str] = []
        refused: str | None = None
        actor = None
        for scope in SCOPES:
            try:
                actor = await gateway.authorize(request, scope)
            except PermissionDenied:
                continue
            except AuthenticationFailed as exc:
                refused = exc.message
                continue
            scopes.append(scope)
        return {
            "version": __version__,
            "scopes": scopes,
            "key_required": refused is not None and not scopes,
            "key_error": refused if request_key(request) is not None else None,
            "actor": actor.id if actor is not None else None,
            "families": sorted(f.name for f in request.app.plugins.get(GatewayPlugin).mounted),
        }
