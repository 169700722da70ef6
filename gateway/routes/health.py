"""/health and /v1/health: 200 when every model is ready, 503 while one is loading."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Response, Router, get
from litestar.di import NamedDependency

from gateway import __version__
from gateway.engine import ModelState
from gateway.gateway import Gateway
from gateway.hookspecs import hookimpl
from gateway.routes.access import TABLE
from gateway.routes.family import RouteFamily

FAMILY = "health"


@get(["/health", "/v1/health"])
async def health(gateway: NamedDependency[Gateway]) -> Response[dict[str, Any]]:
    models = [handle.describe() for handle in gateway.models]
    failed = [m for m in models if m["state"] == ModelState.FAILED]
    if failed:
        message = f"Model `{failed[0]['name']}` failed to load: {failed[0].get('error')}"
        body = {"error": {"code": 503, "message": message, "type": "unavailable_error"}}
        return Response(body | {"models": models}, status_code=503)
    if not gateway.models.all_ready:
        body = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        return Response(body | {"models": models}, status_code=503)
    ready: dict[str, Any] = {"status": "ok", "version": __version__, "models": models}
    if gateway.training.trainers:
        ready["training"] = await gateway.training.describe()
    return Response(ready)


@hookimpl
def register_routes(
    register: Callable[[RouteFamily], None], gateway: NamedDependency[Gateway]
) -> None:
    router = Router(path="/", route_handlers=[health], opt={"family": FAMILY}, tags=["health"])
    register(RouteFamily(FAMILY, router, "Health and readiness", access=TABLE[FAMILY]))
