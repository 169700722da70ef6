"""Running /completion and /infill generations and rendering them as llama-server does:
one answer object per sequence (a list when there are several), or a stream of partial
events and one final event per sequence.

Three stops are decided here, on the text as it comes: `n_indent` (a new line indented less
than asked ends the completion, cut before that line's text), `t_max_predict_ms` (a new
line after the time limit ends it) and the sequence's own end. A sequence stopped here is
aborted in the backend; what it produced after the stop is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway_schemas.canonical import GenerationChunk, GenerationRequest, TokenLogprob
from gateway_schemas.llamacpp import NativeSampling

from gateway.errors import BackendFailure, GatewayError
from gateway.routes.llamacpp import translate as tr


@dataclass
class Run:
    """What every answer of one /completion call shares."""

    body: NativeSampling
    model: str
    settings: dict[str, Any]
    n_ctx: int
    prompts: list[list[int]]
    """The prompt ids of each sequence, by index."""
    prompt_texts: list[str]
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Output:
    """One sequence's output so far."""

    request: GenerationRequest
    prompt: list[int]
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    first_token_at: float | None = None
    stopped: bool = False
    """Ended here (n_indent, t_max_predict_ms): later chunks are dropped."""
    final: GenerationChunk | None = None

    @property
    def done(self) -> bool:
        return self.final is not None


@dataclass
class Step:
    """What one chunk added to a sequence (after the stops decided here)."""

    text: str
    tokens: list[int]
    logprobs: list[TokenLogprob]


def indent_cut(text: str, n_indent: int) -> int | None:
    """Where to cut `text` when its last line, after a new line, starts with text indented
    less than `n_indent` spaces or tabs (llama-server's `n_indent`); None: go on."""
    if n_indent <= 0 or "\n" not in text:
        return None
    start = text.rindex("\n") + 1
    pos = start
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos if pos < len(text) and pos - start < n_indent else None


def feed(seq: Output, chunk: GenerationChunk, body: NativeSampling) -> Step:
    """Add `chunk` to `seq`, applying `n_indent` and `t_max_predict_ms`."""
    now = time.perf_counter()
    if seq.stopped or (not chunk.text and not chunk.token_ids):
        return Step("", [], [])
    if seq.first_token_at is None:
        seq.first_token_at = now
    text = chunk.text
    cut = indent_cut(seq.text + text, body.n_indent)
    if cut is not None:
        text = (seq.text + text)[:cut][len(seq.text) :]
        seq.stopped = True
    elif body.t_max_predict_ms > 0 and "\n" in text:
        seq.stopped = (now - seq.first_token_at) * 1000.0 > body.t_max_predict_ms
    seq.text += text
    seq.tokens += chunk.token_ids
    seq.logprobs += chunk.logprobs
    return Step(text, list(chunk.token_ids), list(chunk.logprobs))


def final_body(run: Run, index: int, seq: Output, *, streamed: bool) -> dict[str, Any]:
    """The answer of one finished sequence (in a stream: its last event)."""
    final = seq.final or GenerationChunk(finish_reason="abort")
    usage = final.usage
    prompt_tokens = len(seq.prompt) or (usage.prompt_tokens if usage is not None else 0)
    predicted = len(seq.tokens)
    body = run.body
    timings = final.timings.to_dict() if final.timings is not None else {}
    if timings:
        timings["predicted_n"] = predicted
    out: dict[str, Any] = {
        "index": index,
        "content": "" if streamed else seq.text,
        "tokens": [] if streamed or not body.return_tokens else seq.tokens,
        "id_slot": final.slot if final.slot is not None else body.id_slot,
        "stop": True,
        "model": run.model,
        "tokens_predicted": predicted,
        "tokens_evaluated": prompt_tokens,
        "generation_settings": run.settings,
        "prompt": run.prompt_texts[index],
        "has_new_line": "\n" in seq.text,
        "truncated": final.finish_reason == "length" and prompt_tokens + predicted >= run.n_ctx,
        "stop_type": "limit" if seq.stopped else tr.stop_type(final),
        "stopping_word": "" if seq.stopped else final.stop_word or "",
        "tokens_cached": usage.cached_tokens if usage is not None else 0,
        "timings": timings,
    }
    if not streamed and body.n_probs > 0 and seq.logprobs:
        out["completion_probabilities"] = tr.probabilities(seq.logprobs, body.post_sampling_probs)
    return tr.pick_fields(out, body.response_fields)


def partial_event(run: Run, index: int, seq: Output, step: Step) -> dict[str, Any]:
    """A streamed piece of one sequence."""
    body = run.body
    event: dict[str, Any] = {
        "index": index,
        "content": step.text,
        "tokens": step.tokens,
        "stop": False,
        "id_slot": body.id_slot,
        "tokens_predicted": len(seq.tokens),
        "tokens_evaluated": len(seq.prompt),
    }
    if body.timings_per_token:
        event["timings"] = _running_timings(run, seq)
    if body.n_probs > 0 and step.logprobs:
        event["completion_probabilities"] = tr.probabilities(
            step.logprobs, body.post_sampling_probs
        )
    return event


def progress_event(run: Run, index: int, seq: Output) -> dict[str, Any]:
    """`return_progress`: the prompt has been read (sent once, before the first token)."""
    total = len(seq.prompt)
    elapsed = ((seq.first_token_at or time.perf_counter()) - run.started) * 1000.0
    return {
        "index": index,
        "content": "",
        "tokens": [],
        "stop": False,
        "id_slot": run.body.id_slot,
        "tokens_predicted": 0,
        "tokens_evaluated": total,
        "prompt_progress": {"total": total, "cache": 0, "processed": total, "time_ms": elapsed},
    }


def _running_timings(run: Run, seq: Output) -> dict[str, Any]:
    now = time.perf_counter()
    first = seq.first_token_at or now
    prompt_ms = (first - run.started) * 1000.0
    predicted_ms = (now - first) * 1000.0
    prompt_n, predicted_n = len(seq.prompt), len(seq.tokens)
    return {
        "cache_n": 0,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n / prompt_ms * 1000.0 if prompt_ms > 0 else 0.0,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
        "predicted_per_second": predicted_n / predicted_ms * 1000.0 if predicted_ms > 0 else 0.0,
    }


Abort = Callable[[str], Any]
"""Stops a backend generation by request id (an awaitable)."""


async def collect(
    run: Run,
    requests: Sequence[GenerationRequest],
    chunks: AsyncIterator[tuple[int, GenerationChunk]],
    abort: Abort,
) -> list[dict[str, Any]]:
    """Every sequence to its end; their answers in index order."""
    sequences = [Output(r, p) for r, p in zip(requests, run.prompts, strict=True)]
    async for index, chunk in chunks:
        seq = sequences[index]
        stopped_before = seq.stopped
        feed(seq, chunk, run.body)
        if seq.stopped and not stopped_before:
            await abort(seq.request.id)
        if chunk.finish_reason is not None:
            seq.final = chunk
    missing = [s.request.id for s in sequences if not s.done]
    if missing:
        raise BackendFailure(f"The generation {missing[0]} ended without finishing.")
    return [final_body(run, i, s, streamed=False) for i, s in enumerate(sequences)]


async def events(
    run: Run,
    requests: Sequence[GenerationRequest],
    chunks: AsyncIterator[tuple[int, GenerationChunk]],
    abort: Abort,
) -> AsyncIterator[bytes]:
    """The SSE events of a streamed completion: partials, then one final per sequence."""
    sequences = [Output(r, p) for r, p in zip(requests, run.prompts, strict=True)]
    try:
        async for index, chunk in chunks:
            seq = sequences[index]
            if seq.done:
                continue
            fresh, stopped_before = seq.first_token_at is None, seq.stopped
            step = feed(seq, chunk, run.body)
            if fresh and seq.first_token_at is not None and run.body.return_progress:
                yield data(progress_event(run, index, seq))
            if step.text or step.tokens:
                yield data(partial_event(run, index, seq, step))
            if seq.stopped and not stopped_before:
                await abort(seq.request.id)
            if chunk.finish_reason is not None:
                seq.final = chunk
                yield data(final_body(run, index, seq, streamed=True))
    except GatewayError as exc:
        yield data({"error": {"code": exc.status, "message": exc.message, "type": exc.kind}})


def data(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


PING = b": ping\n\n"


async def with_pings(stream: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """`stream`, with an SSE comment every `interval` seconds it stays silent (0 or less:
    none), so that a client sees the connection alive through a long prompt."""
    if interval <= 0:
        async for item in stream:
            yield item
        return
    iterator = aiter(stream)
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield PING
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
