"""Training routes over the training service (`gateway.training`): Kiln's `/v1/train/*`
(SFT and GRPO jobs, status, queue, cancel; Kiln's error envelope) and NPU-STACK's
`/api/finetune/*` (fine-tunes on a dataset file; FastAPI's `{"detail"}` errors).

Every route needs the `train` scope: submitting changes what the served model answers,
and the status routes show the training data's adapters and errors.
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

FAMILY = "training"


@hookimpl
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    from gateway.routes.training.finetune import FinetuneController
    from gateway.routes.training.kiln import KilnTrainingController

    router = Router(
        path="/",
        route_handlers=[KilnTrainingController, FinetuneController],
        opt={"family": FAMILY},
        tags=["training"],
    )
    register(
        RouteFamily(
            FAMILY,
            router,
            "Training jobs: Kiln's SFT and GRPO, NPU-STACK's fine-tunes",
            access=TABLE[FAMILY],
        )
    )
