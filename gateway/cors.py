"""Cross-origin requests from browsers, after llama-server's model (`[cors]`).

A request whose `Origin` is not the server's own comes from a page on another site. The
route's row in the access table (`gateway.routes.access`) says which list of origins it
admits: `[cors] origins` (any, by default) or `[cors] private_origins` (localhost, by
default). An admitted origin is echoed back in `Access-Control-Allow-Origin` with
`Vary: Origin`; any other is refused with a 403 before the route runs, so a page cannot
make a browser send a state-changing "simple" request (one that needs no preflight)
either. Preflights (`OPTIONS` with `Access-Control-Request-Method`) need no key, as
browsers send none, and are answered for every mounted route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from gateway.errors import PermissionDenied
from gateway.routes.access import Access
from gateway.settings import CorsSettings
from gateway.utils import is_loopback_host

Headers = list[tuple[bytes, bytes]]

EXPOSED = "X-Gateway-Adapters"
"""Response headers a page may read besides the CORS-safelisted ones."""


def is_localhost(origin: str) -> bool:
    return is_loopback_host(urlsplit(origin).hostname or "")


def foreign_origin(headers: Mapping[str, str]) -> str | None:
    """The request's `Origin` when it is another site's; None for no `Origin` and for a
    page of the server itself (same host and port as the `Host` the browser sent, or the
    proxy's `X-Forwarded-Host`)."""
    origin = headers.get("origin")
    if origin is None:
        return None
    netloc = urlsplit(origin).netloc.lower()
    own = {headers.get("host", "").lower(), headers.get("x-forwarded-host", "").lower()}
    return origin if not netloc or netloc not in own else None


class CorsPolicy:
    def __init__(self, settings: CorsSettings):
        self.settings = settings
        self._open = _OriginList(settings.origins)
        self._private = _OriginList(settings.private_origins)

    def check(self, origin: str, access: Access, method: str, path: str) -> None:
        """Raise a 403 unless pages on `origin` may call the route."""
        origins = self._private if access.private else self._open
        if origins.admits(origin):
            return
        setting = "private_origins" if access.private else "origins"
        raise PermissionDenied(
            f"Pages on {origin} may not call {method} {path}: add the origin to "
            f"[cors] {setting} to allow it.",
            code="origin_not_allowed",
        )

    def response_headers(self, origin: str) -> Headers:
        headers = [
            (b"access-control-allow-origin", origin.encode()),
            (b"vary", b"Origin"),
            (b"access-control-expose-headers", EXPOSED.encode()),
        ]
        if self.settings.credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    def preflight_headers(
        self, origin: str, route_methods: Sequence[str], requested_headers: str | None
    ) -> Headers:
        """The answer to a preflight for a route serving `route_methods`."""
        allowed = {m.upper() for m in self.settings.methods}
        methods = [m for m in route_methods if m in allowed or "*" in allowed]
        if "*" in self.settings.headers:
            allow_headers = requested_headers or ""
        else:
            allow_headers = ", ".join(self.settings.headers)
        headers = [
            *self.response_headers(origin),
            (b"access-control-allow-methods", ", ".join(methods).encode()),
            (b"access-control-max-age", str(self.settings.max_age).encode()),
        ]
        if allow_headers:
            headers.append((b"access-control-allow-headers", allow_headers.encode()))
        return headers


class _OriginList:
    def __init__(self, entries: Sequence[str]):
        self.any = "*" in entries
        self.localhost = "localhost" in entries
        self.exact = {e.lower() for e in entries if e not in ("*", "localhost")}

    def admits(self, origin: str) -> bool:
        return self.any or origin.lower() in self.exact or (self.localhost and is_localhost(origin))
