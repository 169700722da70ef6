"""/health and /v1/health: 200 when every model is ready, 503 while one is loading."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from litestar import Response, Router, get
from litestar.di import NamedDependency

from gateway import __version__
from gateway.engine import Capability, ModelHandle, ModelState
from gateway.errors import GatewayError
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
    ready |= await asyncio.to_thread(kiln_fields, gateway)
    if gateway.training.trainers:
        training = await gateway.training.describe()
        running = training["active_jobs"]
        training["active_job"] = running[0] if running else None
        ready["training"] = training
    return Response(ready)


def kiln_fields(gateway: Gateway) -> dict[str, Any]:
    """Kiln's /health fields: uptime, the default model, its backend and adapters, the
    engines' scheduler counters and named checks (reads the adapter store: a thread)."""
    handles = list(gateway.models)
    default: ModelHandle | None
    try:
        default = gateway.models.handle(gateway.models.first_with(Capability.CHAT))
    except GatewayError:
        default = handles[0] if handles else None
    stats = [h.backend.stats() for h in handles if h.state is ModelState.READY]
    engines = [s for s in stats if s is not None]
    fields: dict[str, Any] = {
        "uptime_seconds": int(time.time() - gateway.started),
        "model": default.name if default else None,
        "backend": default.spec.backend if default else None,
        "active_adapter": None,
        "adapters_loaded": 0,
        "scheduler": {
            "waiting": sum(s.deferred for s in engines),
            "running": sum(s.processing for s in engines),
            "slots": sum(s.slots for s in engines),
        },
        "checks": [
            {
                "name": "model_loaded",
                "pass": all(
                    h.state is ModelState.READY for h in handles if h.spec.load == "startup"
                ),
            },
            {"name": "no_failed_model", "pass": all(h.state != "failed" for h in handles)},
        ],
    }
    if default is not None and Capability.ADAPTERS in default.backend.capabilities:
        store = default.backend.adapters
        chosen = store.default()
        fields["active_adapter"] = chosen[0].name if chosen else None
        fields["adapters_loaded"] = len(store.names())
    return fields


@hookimpl
def register_routes(
    register: Callable[[RouteFamily], None], gateway: NamedDependency[Gateway]
) -> None:
    router = Router(path="/", route_handlers=[health], opt={"family": FAMILY}, tags=["health"])
    register(RouteFamily(FAMILY, router, "Health and readiness", access=TABLE[FAMILY]))
