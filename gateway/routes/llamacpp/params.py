"""llama.cpp's `generation_settings`: the settings a completion ran with, as llama-server
reports them in /completion answers, and (for the defaults) in /props and /slots.

Values are what was sent, resolved as llama-server resolves them: a random seed shows as
4294967295, `repeat_last_n` and `dry_penalty_last_n` of -1 as the context size, a DRY base
below 1 as 1.75, text in `logit_bias` as its tokens, and `ignore_eos` adds every
end-of-generation token to `logit_bias` with bias `null` (minus infinity).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from gateway_schemas.canonical import (
    DEFAULT_DRY_BREAKERS,
    GenerationRequest,
    GrammarConstraint,
    JsonSchemaConstraint,
)
from gateway_schemas.llamacpp import NativeSampling

from gateway.routes.llamacpp import translate as tr

if TYPE_CHECKING:
    from gateway.settings import LlamaCppSettings

RANDOM_SEED = 4294967295
"""What llama-server shows for `seed: -1` (LLAMA_DEFAULT_SEED)."""
SPECULATIVE = {"speculative.n_max": 16, "speculative.n_min": 0, "speculative.p_min": 0.75}
"""llama-server's speculative-decoding defaults (no draft model here: reported, unused)."""


def generation_settings(
    body: NativeSampling,
    defaults: LlamaCppSettings,
    *,
    bias: tr.BiasPairs,
    end_tokens: list[int],
    n_ctx: int,
    model: str,
) -> dict[str, Any]:
    """The `generation_settings` object of a /completion answer for `body`."""
    seed = defaults.seed if body.seed is None else body.seed
    temperature = defaults.temperature if body.temperature is None else body.temperature
    predict = tr.n_predict(body, defaults)
    bias_out = [{"bias": _bias(b), "token": t} for t, b in bias]
    if body.ignore_eos:
        bias_out += [{"bias": None, "token": t} for t in end_tokens]
    return {
        "n_ctx": n_ctx,
        "model": model,
        "seed": RANDOM_SEED if seed < 0 else seed,
        "temperature": temperature,
        "dynatemp_range": body.dynatemp_range,
        "dynatemp_exponent": body.dynatemp_exponent,
        "top_k": body.top_k,
        "top_p": body.top_p,
        "min_p": body.min_p,
        "top_n_sigma": body.top_n_sigma,
        "xtc_probability": body.xtc_probability,
        "xtc_threshold": body.xtc_threshold,
        "typical_p": body.typical_p,
        "repeat_last_n": n_ctx if body.repeat_last_n == -1 else body.repeat_last_n,
        "repeat_penalty": body.repeat_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "dry_multiplier": body.dry_multiplier,
        "dry_base": body.dry_base if body.dry_base >= 1.0 else tr.DEFAULT_DRY_BASE,
        "dry_allowed_length": body.dry_allowed_length,
        "dry_penalty_last_n": n_ctx if body.dry_penalty_last_n == -1 else body.dry_penalty_last_n,
        "dry_sequence_breakers": body.dry_sequence_breakers or list(DEFAULT_DRY_BREAKERS),
        "mirostat": body.mirostat,
        "mirostat_tau": body.mirostat_tau,
        "mirostat_eta": body.mirostat_eta,
        "stop": [s for s in body.stop if s],
        "max_tokens": predict,
        "n_predict": predict,
        "n_keep": body.n_keep,
        "n_discard": body.n_discard,
        "ignore_eos": body.ignore_eos,
        "stream": body.stream,
        "logit_bias": bias_out,
        "n_probs": body.n_probs,
        "min_keep": body.min_keep,
        "grammar": body.grammar or "",
        "grammar_lazy": False,
        "grammar_triggers": [],
        "preserved_tokens": [],
        "chat_format": "Content-only",
        "reasoning_format": "none",
        "reasoning_in_content": False,
        "thinking_forced_open": False,
        "generation_prompt": "",
        "samplers": tr.sampler_names(body.samplers),
        **SPECULATIVE,
        "speculative.type": "none",
        "timings_per_token": body.timings_per_token,
        "post_sampling_probs": body.post_sampling_probs,
        "backend_sampling": False,
        "lora": [{"id": item.id, "scale": item.scale} for item in body.lora or [] if item.scale],
    } | ({"json_schema": body.json_schema} if body.json_schema is not None else {})


def default_settings(defaults: LlamaCppSettings, n_ctx: int, model: str) -> dict[str, Any]:
    """The settings a /completion without options runs with (/props, idle /slots)."""
    body = NativeSampling(stream=True)
    return generation_settings(body, defaults, bias=[], end_tokens=[], n_ctx=n_ctx, model=model)


def slot_view(state: dict[str, Any], defaults: LlamaCppSettings, model: str) -> dict[str, Any]:
    """One entry of /slots (and /props' `default_generation_settings`) from a backend's
    slot state (`id`, `n_ctx`, `is_processing`, `cached_tokens`, `id_task`)."""
    n_ctx = int(state.get("n_ctx", 0))
    task = state.get("id_task")
    return {
        "id": state.get("id", 0),
        "id_task": task if isinstance(task, int) else -1,
        "n_ctx": n_ctx,
        "speculative": False,
        "is_processing": bool(state.get("is_processing", False)),
        "params": default_settings(defaults, n_ctx, model),
        "prompt": "",
        "next_token": {
            "has_next_token": True,
            "has_new_line": False,
            "n_remain": -1,
            "n_decoded": 0,
            "stopping_word": "",
        },
        "cached_tokens": int(state.get("cached_tokens", 0)),
    }


def _bias(value: float) -> float | None:
    return None if math.isinf(value) and value < 0 else value


LLAMA_SAMPLER_NAMES = {"typical_p": "typ_p"}
"""Canonical sampler names that llama.cpp spells differently (top-a and tail-free, which it
lacks, keep theirs)."""


def native_body(request: GenerationRequest, *, stream: bool) -> NativeSampling:
    """The native body a canonical request stands for (what the un-prefixed OpenAI routes
    report in `__verbose`)."""
    s = request.sampling
    constraint = request.constraint
    return NativeSampling(
        n_predict=-1 if request.max_tokens is None else request.max_tokens,
        temperature=s.temperature,
        dynatemp_range=s.dynatemp_range,
        dynatemp_exponent=s.dynatemp_exponent,
        top_k=s.top_k,
        top_p=s.top_p,
        min_p=s.min_p,
        top_n_sigma=s.top_n_sigma if s.top_n_sigma > 0 else -1.0,
        typical_p=s.typical_p,
        xtc_probability=s.xtc_probability,
        xtc_threshold=s.xtc_threshold,
        repeat_penalty=s.repeat_penalty,
        repeat_last_n=s.penalty_last_n,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        dry_multiplier=s.dry_multiplier,
        dry_base=s.dry_base,
        dry_allowed_length=s.dry_allowed_length,
        dry_penalty_last_n=s.dry_penalty_last_n,
        dry_sequence_breakers=list(s.dry_sequence_breakers) or None,
        mirostat=s.mirostat,
        mirostat_tau=s.mirostat_tau,
        mirostat_eta=s.mirostat_eta,
        seed=-1 if s.seed is None else s.seed,
        stop=list(request.stop),
        ignore_eos=request.ignore_eos,
        n_probs=request.top_logprobs,
        post_sampling_probs=request.post_sampling_probs,
        samplers=[LLAMA_SAMPLER_NAMES.get(n, n) for n in s.order if n not in ("top_a", "tfs")]
        or None,
        grammar=constraint.grammar if isinstance(constraint, GrammarConstraint) else None,
        json_schema=constraint.schema if isinstance(constraint, JsonSchemaConstraint) else None,
        cache_prompt=request.cache_prompt,
        id_slot=-1 if request.slot is None else request.slot,
        stream=stream,
    )
