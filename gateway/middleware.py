"""One middleware for every route: authentication, authorization, request metrics,
cancelling the work of clients that went away (`gateway.disconnects`), and the
`X-Gateway-Adapters` header saying which LoRA adapters served a generation
(`gateway.adapters.served`).

Each route handler says what it needs through its `opt`: `family` (for metrics and
errors), `scope` (the API-key scope it requires) and `public` (no key needed: /health).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from litestar import Request
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware

from gateway.adapters import served
from gateway.auth import acting
from gateway.disconnects import run_until_disconnect
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from gateway.gateway import Gateway

DEFAULT_SCOPE = "inference"
CLIENT_GONE = 499
"""The status metrics record for a request whose client left before its response ended."""


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
                header = record.header()
                if header is not None:
                    message["headers"] = [
                        *message.get("headers", []),
                        (served.HEADER.encode(), header.encode()),
                    ]
            await send(message)

        with served.recording() as record:
            try:
                actor = None
                if not opt.get("public", False):
                    actor = await self.gateway.authorize(
                        Request(scope), opt.get("scope", DEFAULT_SCOPE)
                    )
                    scope["state"]["actor"] = actor
                with acting(actor):
                    if scope["type"] != "http":
                        await next_app(scope, receive, send_wrapper)
                    elif not await run_until_disconnect(next_app, scope, receive, send_wrapper):
                        status = CLIENT_GONE
            except (GatewayError, HTTPException) as exc:
                status = exc.status if isinstance(exc, GatewayError) else exc.status_code
                raise
            finally:
                if scope["type"] == "http":
                    elapsed = time.perf_counter() - started
                    self.gateway.metrics.observe_request(family, status, elapsed)
