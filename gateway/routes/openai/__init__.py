"""The OpenAI dialect: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings;
/v1/audio/* answer a 404 that no client retries (`absent`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Router

from gateway.hookspecs import hookimpl
from gateway.routes.access import TABLE
from gateway.routes.family import RouteFamily

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.gateway import Gateway

FAMILY = "openai"


@hookimpl
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    from gateway.routes.openai.absent import AbsentCapabilityController
    from gateway.routes.openai.controllers import OpenAIController
    from gateway.routes.openai.errors import EXCEPTION_HANDLERS

    router = Router(
        path="/",
        route_handlers=[OpenAIController, AbsentCapabilityController],
        exception_handlers=EXCEPTION_HANDLERS,
        opt={"family": FAMILY},
        tags=["openai"],
    )
    register(
        RouteFamily(
            FAMILY, router, "OpenAI-compatible chat, completions, embeddings", access=TABLE[FAMILY]
        )
    )
