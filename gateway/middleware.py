"""One middleware for every route: authentication, authorization and request metrics.

Each route handler says what it needs through its `opt`: `family` (for metrics and
errors), `scope` (the API-key scope it requires) and `public` (no key needed: /health).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from litestar import Request
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from gateway.gateway import Gateway

DEFAULT_SCOPE = "inference"


class GatewayMiddleware(ASGIMiddleware):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        opt = scope["route_handler"].opt
        family = opt.get("family", "openapi")
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if not opt.get("public", False):
                actor = await self.gateway.authorize(
                    Request(scope), opt.get("scope", DEFAULT_SCOPE)
                )
                scope["state"]["actor"] = actor
            await next_app(scope, receive, send_wrapper)
        except (GatewayError, HTTPException) as exc:
            status = exc.status if isinstance(exc, GatewayError) else exc.status_code
            raise
        finally:
            if scope["type"] == "http":
                self.gateway.metrics.observe_request(family, status, time.perf_counter() - started)
