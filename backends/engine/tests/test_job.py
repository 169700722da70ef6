"""The outbox that carries chunks from the worker thread to the requests' event loops."""

from __future__ import annotations

import asyncio
import threading

from gateway_engine.job import Item, Outbox
from gateway_schemas.canonical import GenerationChunk


async def test_items_wait_for_the_flush_and_keep_their_order() -> None:
    outbox = Outbox()
    loop = asyncio.get_running_loop()
    first: asyncio.Queue[Item] = asyncio.Queue()
    second: asyncio.Queue[Item] = asyncio.Queue()
    send_first, send_second = outbox.sender(loop, first), outbox.sender(loop, second)

    def worker() -> None:  # what the scheduler thread does in one step
        for text in ("a", "b", "c"):
            send_first(GenerationChunk(text=text))
        send_second(ValueError("failed"))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    await asyncio.sleep(0)
    assert first.empty() and second.empty()  # nothing before the step's flush
    outbox.flush()
    await asyncio.sleep(0)
    assert [first.get_nowait().text for _ in range(3)] == ["a", "b", "c"]  # type: ignore[union-attr]
    assert isinstance(second.get_nowait(), ValueError)
    outbox.flush()  # nothing pending: nothing sent twice
    await asyncio.sleep(0)
    assert first.empty()


def test_a_closed_loop_drops_its_items() -> None:
    """A request whose loop has closed is not listening; the worker must not fail."""
    outbox = Outbox()
    gone = asyncio.new_event_loop()
    queue: asyncio.Queue[Item] = asyncio.Queue()
    outbox.sender(gone, queue)(GenerationChunk(text="late"))
    gone.close()
    outbox.flush()
    assert queue.empty()
