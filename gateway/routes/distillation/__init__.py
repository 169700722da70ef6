"""Distillation routes (OpenTracy's `/v1/distillation*`) over the distillation service.

Every route needs the `train` scope: a job spends the teacher's money and changes what the
student answers.
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

FAMILY = "distillation"


@hookimpl
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    from gateway.routes.distillation.controllers import DistillationController

    router = Router(
        path="/",
        route_handlers=[DistillationController],
        opt={"family": FAMILY},
        tags=["distillation"],
    )
    register(
        RouteFamily(
            FAMILY, router, "Distillation jobs from a teacher (OpenTracy)", access=TABLE[FAMILY]
        )
    )
