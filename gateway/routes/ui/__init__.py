"""The dashboard: `GET /ui`, one page served by the gateway itself (`static/`: plain
HTML, CSS and JavaScript, no build step, nothing loaded from anywhere else; a
Content-Security-Policy of `'self'` holds the page to that). It drives the public routes
of the other families with the key the operator types in (kept in the tab's
`sessionStorage` only), and `GET /ui/session` tells it which scopes that key has, so it
shows only what the key may do.

The page and its files are public (they hold no data); every figure on it comes from a
route that checks the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Router

from gateway.hookspecs import hookimpl
from gateway.routes.access import TABLE
from gateway.routes.family import RouteFamily

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.gateway import Gateway

FAMILY = "ui"


@hookimpl
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    from gateway.routes.adapters.errors import EXCEPTION_HANDLERS
    from gateway.routes.ui.controllers import UiController

    router = Router(
        path="/",
        route_handlers=[UiController],
        exception_handlers=EXCEPTION_HANDLERS,
        opt={"family": FAMILY},
        tags=["ui"],
        include_in_schema=False,
    )
    register(RouteFamily(FAMILY, router, "the dashboard at /ui", access=TABLE[FAMILY]))
