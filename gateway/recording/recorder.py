"""`PromptRecorder`: what `[recording]` keeps of the gateway's traffic, and how.

`record` runs on the event loop once per finished generation: it decides whether the
generation is recorded and puts the prompt on a queue, never waiting. A writer thread
(started on the first record, stopped by `close` at shutdown) drains the queue into the
`PromptStore` of the gateway's database in batches; a write that fails is logged and
dropped, and a full queue drops the new prompt, so recording can neither slow nor fail a
response.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from gateway_schemas.canonical import GenerationChunk, GenerationRequest

from gateway.database import open_prompt_store
from gateway.recording.store import RecordedPrompt
from gateway.settings import RecordingSettings

log = logging.getLogger("gateway.recording")

UNRECORDED_FINISHES = frozenset({"error", "abort"})
BATCH = 256
"""At most this many queued prompts are written in one transaction."""
NOTED_TEXTS = 1024
"""At most this many texts of unfinished generations are held (`note_text`)."""


def recorded_prompt(
    request: GenerationRequest, now: float, written: str | None = None
) -> RecordedPrompt | None:
    """The record of `request` at time `now`: its chat messages (role and content; tool
    calls left out) or its text prompt. A token-id prompt is recorded as `written` (the
    text the client sent, when a route tokenized it) and skipped without; an empty prompt
    is skipped."""
    if request.messages is not None:
        if not request.messages:
            return None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return RecordedPrompt(
            time=now, model=request.model, tenant=request.tenant, messages=messages
        )
    text = request.prompt if isinstance(request.prompt, str) else written
    if not text:
        return None
    return RecordedPrompt(time=now, model=request.model, tenant=request.tenant, prompt=text)


class PromptRecorder:
    """Records served prompts when `[recording] enabled` into the database `database_url`
    names (`Settings.database()`); the distillation service reads them back with `select`
    and `count` (see `PromptStore`). Nothing touches the database until the first write or
    read."""

    def __init__(
        self,
        settings: RecordingSettings,
        database_url: str,
        *,
        clock: Callable[[], float] = time.time,
        queue_size: int = 10000,
        prune_every: int = 100,
    ):
        self.settings = settings
        self.clock = clock
        self.store = open_prompt_store(
            database_url,
            max_records=settings.max_records,
            max_age_days=settings.max_age_days,
            prune_every=prune_every,
            clock=clock,
        )
        self._models = frozenset(settings.models)
        self._queue: queue.Queue[RecordedPrompt | None] = queue.Queue(maxsize=queue_size)
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._written: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def wants(self, model: str) -> bool:
        """Whether generations of `model` are recorded."""
        return self.enabled and (not self._models or model in self._models)

    def note_text(self, request: GenerationRequest, text: str) -> None:
        """The text a client wrote for `request`, whose prompt a route turned into token ids
        (llama.cpp's `/completion`): recorded instead of the ids when the generation ends.
        Call before the generation starts, on the event loop."""
        if not self.wants(request.model) or not isinstance(request.prompt, list):
            return
        self._written[request.id] = text
        while len(self._written) > NOTED_TEXTS:  # generations that never ran
            del self._written[next(iter(self._written))]

    def record(self, request: GenerationRequest, final: GenerationChunk) -> bool:
        """Queue the prompt of a finished generation if it is to be recorded (recording on,
        its model chosen, not ended by an error or an abort, a text or chat prompt, or a
        token-id prompt with a noted text). Returns whether it was queued. Never blocks and
        never raises for a full queue."""
        written = self._written.pop(request.id, None)
        if final.finish_reason in UNRECORDED_FINISHES or not self.wants(request.model):
            return False
        record = recorded_prompt(request, self.clock(), written)
        if record is None:
            return False
        with self._lock:  # held for a moment, never across a write
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write, args=(self._queue,), name="gateway-recording", daemon=True
                )
                self._writer.start()
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                log.warning("recording queue full: a prompt of %s was not recorded", request.model)
                return False
        return True

    def flush(self) -> None:
        """Wait until every prompt queued so far is written (or dropped on an error)."""
        with self._lock:
            pending = self._queue
        pending.join()

    def close(self) -> None:
        """Write what is queued and stop the writer thread (a later record starts another)."""
        with self._lock:
            writer, pending = self._writer, self._queue
            if writer is None:
                return
            self._writer = None
            self._queue = queue.Queue(maxsize=pending.maxsize)
        pending.put(None)
        writer.join()

    # Reading (see PromptStore).

    def select(
        self,
        *,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[RecordedPrompt]:
        """Distinct recorded prompts, newest first (`PromptStore.select`)."""
        return self.store.select(model=model, since=since, until=until, limit=limit)

    def count(
        self, *, model: str | None = None, since: float | None = None, until: float | None = None
    ) -> int:
        """How many distinct prompts `select` finds (`PromptStore.count`)."""
        return self.store.count(model=model, since=since, until=until)

    # The writer thread.

    def _write(self, pending: queue.Queue[RecordedPrompt | None]) -> None:
        while True:
            batch = [pending.get()]
            while len(batch) < BATCH and batch[-1] is not None:
                try:
                    batch.append(pending.get_nowait())
                except queue.Empty:
                    break
            records = [item for item in batch if item is not None]
            try:
                self.store.add(records)
            except Exception:
                log.exception("recording %d prompt(s) failed; they are dropped", len(records))
            finally:
                for _ in batch:
                    pending.task_done()
            if batch[-1] is None:
                return
