"""A generation job as the worker thread sees it, and how its chunks get back to the loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from gateway_schemas.canonical import GenerationChunk, SamplingParams, TokenLogprob

from gateway.engine.stops import IncrementalDetokenizer, StopMatcher
from gateway_engine.constraints import GrammarState
from gateway_engine.lora.batch import AdapterSet

AdapterKey: TypeAlias = tuple[tuple[str, str, float], ...]
"""`(name, version, scale)` of each adapter of a sequence: what its KV cache depends on."""

Item: TypeAlias = GenerationChunk | BaseException
"""What travels from the worker to the request's stream: a chunk, or an error to raise."""

Delivery: TypeAlias = tuple[asyncio.Queue[Item], Item]
"""An item and the queue of the request it goes to."""


@dataclass
class Job:
    """One sequence to generate, validated and tokenized on the event-loop side."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    stop: list[str]
    max_new_tokens: int
    ignore_eos: bool
    top_logprobs: int | None
    """None: no logprobs; else how many alternatives each token carries."""
    use_prompt_cache: bool
    send: Callable[[Item], None]
    grammar: GrammarState | None = None
    """The constraint's state when the output must follow a grammar or JSON schema."""
    time_limit: float | None = None
    """Seconds allowed after the prompt; then the job ends with `length`."""
    post_sampling: bool = False
    """Logprobs from the sampled distribution rather than the raw one."""
    dry_breakers: frozenset[int] = frozenset()
    """Token ids that end a DRY repeat match (when DRY is on)."""
    slot: int | None = None
    """A slot asked for by the client (llama.cpp's `id_slot`); None: any free one."""
    adapters: AdapterSet = ()
    """The LoRA adapters and scales this sequence runs with (empty: the base model)."""
    aborted: threading.Event = field(default_factory=threading.Event)

    @property
    def adapter_key(self) -> AdapterKey:
        return tuple((w.name, w.version, scale) for w, scale in self.adapters)

    def abort(self) -> None:
        """Ask the worker to stop this job at its next token (thread-safe)."""
        self.aborted.set()


class Outbox:
    """Items on their way from the worker thread to the requests' queues, handed to each
    event loop once per `flush` (once per step): one wake-up of the loop per step rather
    than one per token and stream (each wake-up is a write to the loop's self-pipe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[asyncio.AbstractEventLoop, list[Delivery]] = {}

    def sender(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Item]
    ) -> Callable[[Item], None]:
        """A thread-safe `send` of items for `queue` on `loop`, delivered at the next flush."""

        def send(item: Item) -> None:
            with self._lock:
                self._pending.setdefault(loop, []).append((queue, item))

        return send

    def flush(self) -> None:
        """Hand every pending item to its loop; a closed loop drops them (nobody listens)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for loop, items in pending.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[Delivery]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


class ChunkEmitter:
    """Turns sampled tokens into text chunks: incremental decoding, stop strings.

    Tokens whose text is held back (an incomplete UTF-8 character, a possible stop string)
    ride along with the next chunk that has text. Tokens that only made up a stop string
    are not emitted.
    """

    def __init__(
        self,
        job: Job,
        decode: Callable[[list[int]], str],
    ):
        self._job = job
        self._detokenizer = IncrementalDetokenizer(decode, job.prompt_ids)
        self._stops = StopMatcher(job.stop)
        self._ids: list[int] = []
        self._logprobs: list[TokenLogprob] = []

    @property
    def stop_word(self) -> str | None:
        return self._stops.matched

    def push(self, token_id: int, logprob: TokenLogprob | None) -> None:
        """Add one sampled (non-EOS) token; sends a chunk when text is ready."""
        self._ids.append(token_id)
        if logprob is not None:
            self._logprobs.append(logprob)
        delta = self._detokenizer.push(token_id)
        text = self._stops.feed(delta) if delta else ""
        if text:
            self._send(text)
        elif self._stops.matched is not None:
            self._ids, self._logprobs = [], []

    def finish(self, chunk: GenerationChunk) -> None:
        """Send the held text (if no stop string matched), then the final `chunk`."""
        tail = self._stops.flush()
        if tail or (self._ids and self._stops.matched is None):
            self._send(tail)
        chunk.stop_word = self._stops.matched
        self._job.send(chunk)

    def _send(self, text: str) -> None:
        self._job.send(GenerationChunk(text=text, token_ids=self._ids, logprobs=self._logprobs))
        self._ids, self._logprobs = [], []
