"""The llama.cpp-native dialect, mounted at the root: /completion, /tokenize, /detokenize,
/apply-template, /infill, /embedding, /embeddings, /rerank, /props, /slots, /lora-adapters
(see `lora`), and the token counting routes /v1/chat/completions/input_tokens and
/v1/responses/input_tokens; and, as llama.cpp's server does, the OpenAI routes again
without their `/v1` prefix (with llama-server's extras, see `bare`). Errors in llama.cpp's
shape.
Settings: `[llamacpp]` (see `gateway.settings.LlamaCppSettings`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Router

from gateway.hookspecs import hookimpl
from gateway.routes.access import TABLE
from gateway.routes.family import RouteFamily

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.gateway import Gateway

FAMILY = "llamacpp"


@hookimpl
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    from gateway.routes.llamacpp.bare import BareOpenAIController
    from gateway.routes.llamacpp.controllers import NativeController, TokenCountController
    from gateway.routes.llamacpp.errors import EXCEPTION_HANDLERS

    router = Router(
        path="/",
        route_handlers=[NativeController, TokenCountController, BareOpenAIController],
        exception_handlers=EXCEPTION_HANDLERS,
        opt={"family": FAMILY},
        tags=["llama.cpp"],
    )
    register(
        RouteFamily(
            FAMILY,
            router,
            "llama.cpp server API (native and un-prefixed OpenAI)",
            access=TABLE[FAMILY],
        )
    )
