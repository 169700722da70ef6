"""The llama.cpp-native dialect, mounted at the root: /completion, /tokenize, /detokenize,
/apply-template, /infill, /embedding, /rerank, /props, /slots; and, as llama.cpp's server
does, the OpenAI routes again without their `/v1` prefix. Errors in llama.cpp's shape.
Settings: `[llamacpp]` (see `gateway.settings.LlamaCppSettings`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Router

from gateway.hookspecs import hookimpl
from gateway.routes.family import RouteFamily

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.gateway import Gateway

FAMILY = "llamacpp"


@hookimpl
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    from gateway.routes.llamacpp.controllers import NativeController
    from gateway.routes.llamacpp.errors import EXCEPTION_HANDLERS
    from gateway.routes.openai.controllers import OpenAIController

    class BareOpenAIController(OpenAIController):
        """/chat/completions, /completions, /embeddings, /models: no `/v1`."""

        path = "/"

    router = Router(
        path="/",
        route_handlers=[NativeController, BareOpenAIController],
        exception_handlers=EXCEPTION_HANDLERS,
        opt={"family": FAMILY, "scope": "inference"},
        tags=["llama.cpp"],
    )
    register(RouteFamily(FAMILY, router, "llama.cpp server API (native and un-prefixed OpenAI)"))
