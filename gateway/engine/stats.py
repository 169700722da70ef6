"""What a batching engine has done since it loaded: the figures behind llama-server's
`/metrics` names (`gateway.metrics`), read by the scrape, never pushed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of one loaded model's engine. Times are wall seconds of the requests
    that ended, as llama-server counts them: a request's prompt time runs from its
    admission to its first token, its generation time from there to its end."""

    prompt_tokens: int = 0
    """Prompt tokens computed (those a prompt cache supplied are not counted)."""
    prompt_seconds: float = 0.0
    predicted_tokens: int = 0
    predicted_seconds: float = 0.0
    decode_calls: int = 0
    """Batched forward passes."""
    busy_slots: int = 0
    """Sequences in those passes, summed (over `decode_calls`: the mean batch)."""
    tokens_max: int = 0
    """The longest sequence seen, prompt and output, in tokens."""
    processing: int = 0
    """Requests in a slot now."""
    deferred: int = 0
    """Requests waiting for a slot now."""
    slots: int = 0
    cached_tokens: int = 0
    """Tokens the KV cache holds now, over every slot."""
    cache_capacity: int = 0
    """Tokens the KV cache can hold, over every slot."""
    adapters_resident: int = 0
    """LoRA adapters held in the engine's memory now."""
