"""The model manager's routes (`gateway.engine.models`): NPU-STACK's `/v1/models/load`,
`/unload`, `/status` and `POST /v1/models`; llama-server's router `/models/load`,
`/unload`, `/sse` and `POST /models`.

Loading, unloading and registering need the `admin` scope; the status and the events
need `inference`, as listing the models does.
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

FAMILY = "models"


@hookimpl
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    from gateway.routes.models.controllers import NpuModelsController, RouterModelsController

    router = Router(
        path="/",
        route_handlers=[NpuModelsController, RouterModelsController],
        opt={"family": FAMILY},
        tags=["models"],
    )
    register(
        RouteFamily(
            FAMILY,
            router,
            "The model manager: NPU-STACK's and llama-server's router routes",
            access=TABLE[FAMILY],
        )
    )
