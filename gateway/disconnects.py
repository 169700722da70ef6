"""Cancel a request's work when its client goes away.

ASGI servers tell an application that its client disconnected only through `receive()`,
which a handler stops calling once it has read the body. So a non-streaming generation whose
client gave up would run on, holding an engine slot, until it reached its token limit.
`run_until_disconnect` runs the application as a task and, once the request body has been
read, keeps listening on `receive()` itself: on `http.disconnect` before the response is
complete it cancels the task. Cancelling unwinds the generation (`GenerationService.stream`
closes the backend's stream, which aborts the sequence), so the engine frees the slot at
its next step. Streaming responses get the same treatment; the application's own listeners
(Litestar's `Stream` waits for the disconnect too) are told through the wrapped `receive`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

DISCONNECT: ReceiveMessage = cast("ReceiveMessage", {"type": "http.disconnect"})


async def run_until_disconnect(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> bool:
    """Run `app` for one HTTP request; False when the client left before the response ended
    (the app was cancelled then)."""
    body_read = asyncio.Event()
    gone = asyncio.Event()
    response_done = False

    async def app_receive() -> ReceiveMessage:
        if body_read.is_set():  # only the watcher reads from the server now
            await gone.wait()
            return DISCONNECT
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
        elif not message.get("more_body", False):
            body_read.set()
        return message

    async def app_send(message: Message) -> None:
        nonlocal response_done
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            response_done = True
        await send(message)

    async def watch() -> None:
        await body_read.wait()
        while (await receive())["type"] != "http.disconnect":
            await asyncio.sleep(0)  # never spin on a server that answers at once
        gone.set()

    task = asyncio.ensure_future(app(scope, app_receive, app_send))
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if gone.is_set() and not task.done() and not response_done:
            task.cancel()
        await asyncio.wait({task})
        if task.cancelled():
            return False
        task.result()  # the application's own exception, if it raised one
        return True
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
