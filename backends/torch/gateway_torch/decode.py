"""The decode loop of one sequence, run on the worker thread.

Prefill the prompt into a `DynamicCache` (reusing the previous sequence's cache for a
shared prefix), then feed one token at a time. Stops on EOS, `max_new_tokens`, a stop
string or an abort; the last chunk carries usage and timings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from gateway_schemas.canonical import (
    FinishReason,
    GenerationChunk,
    Timings,
    TokenLogprob,
    TopLogprob,
    Usage,
)

from gateway_torch.job import ChunkEmitter, Job
from gateway_torch.loading import CausalModel
from gateway_torch.sampling import make_generator, sample


class PrefixCache:
    """The KV cache left by the previous sequence, and the ids it holds."""

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._cache: Any = None

    def take(self, prompt: Sequence[int], config: Any, reuse: bool) -> tuple[Any, int]:
        """A cache for `prompt` and how many of its tokens it already holds."""
        from transformers import DynamicCache

        cache, ids = self._cache, self._ids
        self.clear()
        if reuse and cache is not None:
            common = 0
            for a, b in zip(ids, prompt, strict=False):
                if a != b:
                    break
                common += 1
            common = min(common, len(prompt) - 1)  # prefill at least one token for logits
            if common > 0:
                try:
                    cache.crop(common)
                    return cache, common
                except (ValueError, RuntimeError, AttributeError):
                    pass  # e.g. a sliding-window layer that cannot be cropped
        return DynamicCache(config=config), 0

    def keep(self, cache: Any, ids: list[int]) -> None:
        self._cache, self._ids = cache, ids

    def clear(self) -> None:
        self._cache, self._ids = None, []


def forward(lm: CausalModel, ids: Sequence[int], cache: Any) -> torch.Tensor:
    """Run `ids` through the model; the `[1, vocab]` float32 logits of the last position."""
    inputs = torch.tensor([list(ids)], dtype=torch.long, device=lm.device)
    kwargs: dict[str, Any] = {"past_key_values": cache, "use_cache": True}
    if lm.accepts_logits_to_keep:
        kwargs["logits_to_keep"] = 1
    out = lm.model(input_ids=inputs, **kwargs)
    logits = out.logits[:, -1, :].float()
    if lm.tokenizer_size < logits.shape[-1]:
        logits[:, lm.tokenizer_size :] = float("-inf")  # padding rows with no token
    return logits


def token_logprob(lm: CausalModel, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The chosen token's logprob under the raw distribution and the `top` best ones."""
    log_probs = torch.log_softmax(logits[0], dim=-1)
    text, data = lm.pieces.piece(token)
    alternatives: list[TopLogprob] = []
    if top > 0:
        values, ids = torch.topk(log_probs, top)
        for value, alt in zip(values.tolist(), ids.tolist(), strict=True):
            alt_text, alt_bytes = lm.pieces.piece(alt)
            alternatives.append(
                TopLogprob(token=alt_text, token_id=alt, logprob=value, bytes=alt_bytes)
            )
    return TokenLogprob(
        token=text,
        token_id=token,
        logprob=float(log_probs[token]),
        bytes=data,
        top=alternatives,
    )


def run_sequence(lm: CausalModel, job: Job, prefix: PrefixCache) -> None:
    """Generate `job` to its end, sending chunks through `job.send`."""
    started = time.perf_counter()
    prompt = job.prompt_ids
    emitter = ChunkEmitter(job, lambda ids: lm.encoder.decode(ids, skip_special=True))
    completion, reused, prefilled, prompt_done = 0, 0, 0, started
    finish: FinishReason = "length"
    if job.aborted.is_set():
        finish = "abort"
    elif job.max_new_tokens > 0:
        cache, reused = prefix.take(prompt, lm.model.config, job.use_prompt_cache)
        logits = forward(lm, prompt[reused:], cache)
        prefilled = len(prompt) - reused
        prompt_done = time.perf_counter()
        fed = list(prompt)
        generator = make_generator(job.sampling.seed, lm.device)
        while True:
            token = int(sample(logits, [job.sampling], [fed], [generator])[0])
            completion += 1
            if token in lm.eos_ids and not job.ignore_eos:
                finish = "stop"
                break
            logprob = None
            if job.top_logprobs is not None:
                logprob = token_logprob(lm, logits, token, job.top_logprobs)
            emitter.push(token, logprob)
            if emitter.stop_word is not None:
                finish = "stop"
                break
            if completion >= job.max_new_tokens:
                break
            if job.aborted.is_set():
                finish = "abort"
                break
            logits = forward(lm, [token], cache)
            fed.append(token)
        prefix.keep(cache, fed)
    ended = time.perf_counter()
    emitter.finish(
        GenerationChunk(
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=len(prompt), completion_tokens=completion, cached_tokens=reused
            ),
            timings=Timings(
                prompt_n=prefilled,
                prompt_ms=(prompt_done - started) * 1000.0,
                predicted_n=completion,
                predicted_ms=(ended - prompt_done) * 1000.0,
                cache_n=reused,
            ),
        )
    )
