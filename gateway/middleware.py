"""One middleware for every route: browser origins (`gateway.cors`), authentication and
authorization (the route's row in `gateway.routes.access`), request metrics, cancelling
the work of clients that went away (`gateway.disconnects`), and the `X-Gateway-Adapters`
header saying which LoRA adapters served a generation (`gateway.adapters.served`).

Each route handler's `opt["family"]` names its family (for metrics and errors).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

from litestar import Request
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from opentelemetry.trace import StatusCode

from gateway.adapters import served
from gateway.auth import acting
from gateway.autoload import GENERATING, holding, read_body, replay
from gateway.cors import CorsPolicy, foreign_origin
from gateway.disconnects import run_until_disconnect
from gateway.errors import GatewayError, ModelNotReady
from gateway.routes.access import ADMIN, AccessTable

if TYPE_CHECKING:
    from litestar.types import (
        ASGIApp,
        HTTPResponseStartEvent,
        Message,
        Receive,
        ReceiveMessage,
        Scope,
        Send,
    )

    from gateway.gateway import Gateway

CLIENT_GONE = 499
"""The status metrics record for a request whose client left before its response ended."""
CORS_HEADERS = "gateway_cors_headers"
"""Where a request's CORS response headers wait in `scope["state"]` for `add_cors_headers`."""


class GatewayMiddleware(ASGIMiddleware):
    def __init__(self, gateway: Gateway, access: AccessTable):
        self.gateway = gateway
        self.access = access
        self.cors = CorsPolicy(gateway.settings.cors)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        family = scope["route_handler"].opt.get("family", "openapi")
        method = str(scope.get("method", "GET"))
        template = str(scope.get("path_template", "?"))
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
                if scope.get("method") == "OPTIONS":
                    await self._options(scope, receive, send_wrapper, next_app)
                    return
                if scope["type"] != "http":
                    with acting(await self._admit(scope)):
                        await next_app(scope, receive, send_wrapper)
                    return
                with self.gateway.tracing.request(
                    method, template, family, Request(scope).headers
                ) as span:
                    try:
                        with acting(await self._admit(scope)):
                            if not await self._run(scope, receive, send_wrapper, next_app, family):
                                status = CLIENT_GONE
                    except (GatewayError, HTTPException) as exc:
                        status = exc.status if isinstance(exc, GatewayError) else exc.status_code
                        raise
                    finally:
                        if span is not None:
                            span.set_attribute("http.response.status_code", status)
                            if status >= 500:
                                span.set_status(StatusCode.ERROR)
            except (GatewayError, HTTPException) as exc:
                status = exc.status if isinstance(exc, GatewayError) else exc.status_code
                raise
            finally:
                if scope["type"] == "http":
                    elapsed = time.perf_counter() - started
                    route = f"{method} {template}"
                    self.gateway.metrics.observe_request(family, route, status, elapsed)

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp, family: str
    ) -> bool:
        """Run the handler with its model held loaded (`gateway.autoload`); False when the
        client left first. A model unloaded with `abort` cancels the handler: 503 when
        its response had not started, else the response ends where it was."""
        body, messages = b"", cast("list[ReceiveMessage]", [])
        if family in GENERATING and scope.get("method") in ("POST", "PUT", "PATCH"):
            body, messages, _ = await read_body(receive)
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async with holding(self.gateway, scope, family, body) as handle:
            run = run_until_disconnect(next_app, scope, replay(messages, receive), send_started)
            if handle is None:
                return await run
            task = asyncio.ensure_future(run)
            handle.leases.add(task)
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():  # this request itself was cancelled
                    task.cancel()
                    raise
            finally:
                handle.leases.discard(task)
        if not started:
            raise ModelNotReady(
                f"Model `{handle.name}` was unloaded while this request ran.",
                code="model_unloaded",
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def _admit(self, scope: Scope) -> Any:
        """Check the request's origin and key against its route's row; return its actor."""
        request: Request[Any, Any, Any] = Request(scope)
        method = str(scope.get("method", "GET"))
        path = str(scope.get("path_template", scope["path"]))
        row = self.access.lookup(method, path)
        access = row.access if row else ADMIN  # a route mounted after create_app: none are
        origin = foreign_origin(request.headers)
        if origin is not None:
            self.cors.check(origin, access, method, path)
            scope["state"][CORS_HEADERS] = self.cors.response_headers(origin)
        if access.scope is None:
            return None
        actor = await self.gateway.authorize(request, access.scope)
        scope["state"]["actor"] = actor
        return actor

    async def _options(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """A preflight for a mounted route's method is answered here (no key: browsers send
        none); any other OPTIONS gets Litestar's `Allow` answer."""
        request: Request[Any, Any, Any] = Request(scope)
        requested = request.headers.get("access-control-request-method", "").upper()
        origin = request.headers.get("origin")
        path = scope["path_template"]
        row = self.access.lookup(requested, path) if requested else None
        if origin is None or row is None:
            await next_app(scope, receive, send)
            return
        if foreign_origin(request.headers) is not None:
            self.cors.check(origin, row.access, requested, path)
        headers = self.cors.preflight_headers(
            origin,
            self.access.methods(path),
            request.headers.get("access-control-request-headers"),
        )
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 204,
            "headers": headers,
        }
        await send(start)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def add_cors_headers(message: Message, scope: Scope) -> None:
    """`before_send` hook: every response to an admitted cross-origin request, errors
    raised before its route ran included, carries the CORS headers."""
    if message["type"] != "http.response.start":
        return
    headers = scope.get("state", {}).get(CORS_HEADERS)
    if headers:
        message["headers"] = [*message.get("headers", []), *headers]
