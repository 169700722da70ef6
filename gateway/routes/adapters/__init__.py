"""Kiln's adapter API: `/v1/adapters` (list, load, unload, delete, download, upload, merge)
over each model's adapter store (`gateway.adapters.store`), and `/v1/completions/batch`.

Errors in Kiln's envelope with OpenAI's fields kept (`errors`). Scopes: listing, download
and batch need `inference`; load, unload, delete, upload and merge need `adapters`.
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

FAMILY = "adapters"


@hookimpl
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    from gateway.routes.adapters.batch import BatchController
    from gateway.routes.adapters.controllers import AdapterController
    from gateway.routes.adapters.errors import EXCEPTION_HANDLERS

    router = Router(
        path="/",
        route_handlers=[AdapterController, BatchController],
        exception_handlers=EXCEPTION_HANDLERS,
        opt={"family": FAMILY},
        tags=["adapters"],
    )
    register(
        RouteFamily(
            FAMILY,
            router,
            "Kiln's LoRA adapter management and batch completions",
            access=TABLE[FAMILY],
        )
    )
