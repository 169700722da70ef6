"""Which model a request uses, found before its handler runs, so that the model manager can
load it first and hold it loaded until the response ends (`ModelManager.lease`).

As llama-server's router does, for the OpenAI, llama.cpp and KoboldCpp families: a POST
names its model in the JSON body's `model` field, a GET in the `model` query parameter; `?autoload=false` asks not to load one that is not
loaded. A request of the generating families that names no model (or an unknown one,
with `unknown_models = "default"`) uses the family's default model, which is loaded the
same way. The body is read here and handed on to the handler unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

import msgspec

from gateway.engine import Capability, ModelHandle
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from litestar.types import Receive, ReceiveMessage, Scope

    from gateway.gateway import Gateway

MAX_PEEK = 8 << 20
"""Bodies larger than this are not searched for a model name (uploads, datasets)."""
GENERATING = frozenset({"openai", "llamacpp", "kobold"})
"""The families whose requests are served by a model. (The model manager's own routes
name models they load or unload; training jobs name the model their worker loads.)"""


class _Named(msgspec.Struct):
    model: Any = None


async def read_body(receive: Receive) -> tuple[bytes, list[ReceiveMessage], bool]:
    """The whole request body, the messages it came in, and whether the client left."""
    messages: list[ReceiveMessage] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] == "http.disconnect":
            return b"".join(chunks), messages, True
        chunks.append(cast("bytes", message.get("body", b"")))
        if not message.get("more_body", False):
            return b"".join(chunks), messages, False


def replay(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """A `receive` that gives `messages` again, then the server's."""
    pending = list(messages)

    async def replayed() -> ReceiveMessage:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def named_model(scope: Scope, body: bytes) -> tuple[str | None, bool]:
    """The model a request names (None: none) and whether it may be auto-loaded."""
    query = parse_qs(cast("bytes", scope.get("query_string", b"")).decode("latin-1"))
    autoload = query.get("autoload", ["true"])[-1].lower() not in ("false", "0", "no")
    name = query.get("model", [None])[-1]
    if name is None and body[:1] in (b"{", b" ", b"\n", b"\r", b"\t") and len(body) <= MAX_PEEK:
        try:
            found = msgspec.json.decode(body, type=_Named).model
        except msgspec.DecodeError:  # the handler says what is wrong with the body
            found = None
        name = found if isinstance(found, str) and found else None
    return name, autoload


def model_of(gateway: Gateway, family: str, method: str, path: str, name: str | None) -> str | None:
    """The registered model a request will be served by, or None when this cannot tell
    (the handler then resolves it and answers its own errors). A GET that names no model
    (a listing, `/props`) holds none: reading about models loads nothing."""
    if family not in GENERATING:
        return None
    models = gateway.models
    if name is not None and name in models:
        return name
    if method == "GET":
        return None
    if name is not None and gateway.settings.unknown_models != "default":
        return None
    capability = Capability.EMBED if "embed" in path else Capability.CHAT
    if family == "kobold":
        capability = Capability.GENERATE
        if gateway.settings.kobold.model:
            return gateway.settings.kobold.model
    try:
        return models.first_with(capability)
    except GatewayError:
        return None


@contextlib.asynccontextmanager
async def holding(
    gateway: Gateway, scope: Scope, family: str, body: bytes
) -> AsyncIterator[ModelHandle | None]:
    """Hold the request's model loaded (loading it when allowed) for the block."""
    name, autoload = named_model(scope, body)
    method, path = str(scope.get("method", "GET")), str(scope.get("path", ""))
    model = model_of(gateway, family, method, path, name)
    if model is None:
        yield None
        return
    autoload = autoload and gateway.settings.model_manager.autoload
    async with gateway.models.lease(model, autoload=autoload) as handle:
        yield handle
