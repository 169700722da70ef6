"""/metrics in the Prometheus text format (admin scope)."""

from __future__ import annotations

from collections.abc import Callable

from litestar import Response, Router, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.errors import NotSupported
from gateway.gateway import Gateway
from gateway.hookspecs import hookimpl
from gateway.routes.access import TABLE
from gateway.routes.family import RouteFamily
from gateway.routes.openai.errors import EXCEPTION_HANDLERS

FAMILY = "metrics"


@get("/metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(gateway: NamedDependency[Gateway]) -> Response[bytes]:
    if not gateway.settings.llamacpp.metrics:
        raise NotSupported("This server does not support metrics ([llamacpp] metrics = false).")
    gateway.metrics.snapshot = await gateway.metrics_snapshot()
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@hookimpl
def register_routes(
    register: Callable[[RouteFamily], None], gateway: NamedDependency[Gateway]
) -> None:
    router = Router(
        path="/",
        route_handlers=[metrics],
        opt={"family": FAMILY},
        exception_handlers=EXCEPTION_HANDLERS,
        tags=["observability"],
    )
    register(RouteFamily(FAMILY, router, "Prometheus metrics", access=TABLE[FAMILY]))
