"""Live figures for dashboards, in Kiln's shapes: decode speed over a rolling window
(`GET /v1/stats/decode`) and a bounded history of recent generations
(`GET /v1/stats/recent-requests`).

`GenerationService.stream` reports each token chunk (`DecodeWindow.record`) and each
finished generation (`RecentRequests.add`). Both keep a fixed number of entries, so
neither grows with traffic; `[stats] recent_requests = 0` records no history (prompts
are not kept anywhere then).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any

import msgspec
from gateway_schemas.canonical import GenerationChunk, GenerationRequest

TOKEN_RING = 4096
"""Token timestamps kept for the decode window (Kiln keeps as many)."""
PROMPT_PREVIEW = 120
COMPLETION_PREVIEW = 200
NOTED_TEXTS = 1024
"""At most this many texts of generations not yet finished are held (`note_text`)."""


class DecodeWindow:
    """Tokens generated over the last `window` seconds and the gaps between them."""

    def __init__(self, window: float = 60.0):
        self.window = window
        self._tokens: deque[tuple[float, float | None]] = deque(maxlen=TOKEN_RING)

    def record(self, now: float, tokens: int, gap: float | None) -> None:
        """`tokens` arrived at `now` (`time.monotonic()`), `gap` seconds after the same
        sequence's previous ones (None: its first); the gap is shared among them."""
        each = gap / tokens if gap is not None and tokens else None
        for _ in range(tokens):
            self._tokens.append((now, each))

    def summary(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        recent = [(t, gap) for t, gap in self._tokens if now - t <= self.window]
        gaps = sorted(gap * 1000 for _, gap in recent if gap is not None)
        span = now - recent[0][0] if recent else 0.0
        return {
            "tok_per_sec": round(len(recent) / max(span, 1.0), 3) if recent else 0.0,
            "p50_itl_ms": round(_percentile(gaps, 0.50), 3),
            "p99_itl_ms": round(_percentile(gaps, 0.99), 3),
            "mean_itl_ms": round(statistics.fmean(gaps), 3) if gaps else 0.0,
            "sample_count": len(gaps),
            "window_secs": self.window,
        }


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


class RecentRequest(msgspec.Struct, kw_only=True):
    """One finished generation, as Kiln's dashboard lists it."""

    id: str
    timestamp_unix_ms: int
    model: str
    prompt_preview: str
    completion_preview: str
    prompt_tokens: int
    completion_tokens: int
    duration_ms: int
    streamed: bool
    finish_reason: str | None
    tenant: str | None = None


class RecentRequests:
    """The last `size` generations, newest first (`size` 0: none kept)."""

    def __init__(self, size: int = 100):
        self.size = size
        self._entries: deque[RecentRequest] = deque(maxlen=max(size, 1))
        self._written: dict[str, str] = {}

    def note_text(self, request: GenerationRequest, text: str) -> None:
        """The text a client wrote for `request`, whose prompt a route turned into token
        ids (llama.cpp's `/completion`): previewed instead of the ids."""
        if self.size == 0 or not isinstance(request.prompt, list):
            return
        self._written[request.id] = text[:PROMPT_PREVIEW]
        while len(self._written) > NOTED_TEXTS:  # generations that never ran
            del self._written[next(iter(self._written))]

    def add(
        self,
        request: GenerationRequest,
        final: GenerationChunk,
        completion: str,
        seconds: float,
        streamed: bool,
    ) -> None:
        written = self._written.pop(request.id, None)
        if self.size == 0:
            return
        usage = final.usage
        self._entries.append(
            RecentRequest(
                id=request.id,
                timestamp_unix_ms=int(time.time() * 1000),
                model=request.model,
                prompt_preview=(written or _prompt_text(request))[:PROMPT_PREVIEW],
                completion_preview=completion[:COMPLETION_PREVIEW],
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                duration_ms=int(seconds * 1000),
                streamed=streamed,
                finish_reason=final.finish_reason,
                tenant=request.tenant,
            )
        )

    def newest_first(self) -> list[RecentRequest]:
        return list(reversed(self._entries))


def _prompt_text(request: GenerationRequest) -> str:
    """The request's prompt as a person reads it: the text prompt, else the last user
    message's text (token-id prompts show as such)."""
    if isinstance(request.prompt, str):
        return request.prompt
    if isinstance(request.prompt, list):
        return f"<{len(request.prompt)} token ids>"
    for message in reversed(request.messages or []):
        if message.role == "user":
            return message.content
    return ""
