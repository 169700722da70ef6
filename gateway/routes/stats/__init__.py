"""Kiln's monitoring routes: `GET /v1/config` (the effective settings, secrets redacted,
with each loaded model's engine sizing), `GET /v1/stats/decode` (rolling decode speed and
inter-token latency) and `GET /v1/stats/recent-requests` (the last generations, with
previews). Errors in Kiln's envelope.

`/v1/stats/decode` needs `inference`; the configuration and the recent requests (other
tenants' prompts) need `admin`.
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

FAMILY = "stats"


@hookimpl
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    from gateway.routes.adapters.errors import EXCEPTION_HANDLERS
    from gateway.routes.stats.controllers import StatsController

    router = Router(
        path="/",
        route_handlers=[StatsController],
        exception_handlers=EXCEPTION_HANDLERS,
        opt={"family": FAMILY},
        tags=["stats"],
    )
    register(
        RouteFamily(
            FAMILY, router, "Kiln's configuration and dashboard figures", access=TABLE[FAMILY]
        )
    )
