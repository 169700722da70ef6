"""From llama.cpp's native bodies to canonical requests, and from chunks back to its fields."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from gateway_schemas.canonical import (
    DEFAULT_DRY_BREAKERS,
    AdapterRef,
    Constraint,
    GenerationChunk,
    GenerationRequest,
    GrammarConstraint,
    JsonSchemaConstraint,
    SamplerName,
    SamplingParams,
    TokenLogprob,
)
from gateway_schemas.llamacpp import NativeSampling

from gateway.errors import InvalidRequest

if TYPE_CHECKING:
    from gateway.engine import Backend
    from gateway.settings import LlamaCppSettings

CANONICAL_SAMPLERS: dict[str, SamplerName | None] = {
    "penalties": "penalties",
    "dry": "dry",
    "top_n_sigma": "top_n_sigma",
    "top_k": "top_k",
    "typ_p": "typical_p",
    "typical_p": "typical_p",
    "top_p": "top_p",
    "min_p": "min_p",
    "xtc": "xtc",
    "temperature": "temperature",
    "infill": None,  # llama.cpp's infill sampler: no canonical counterpart, accepted and skipped
}
SAMPLER_LETTERS = {
    "e": "penalties",
    "d": "dry",
    "k": "top_k",
    "y": "typ_p",
    "p": "top_p",
    "s": "top_n_sigma",
    "m": "min_p",
    "x": "xtc",
    "t": "temperature",
    "i": "infill",
}
DEFAULT_SAMPLERS = [
    "penalties",
    "dry",
    "top_n_sigma",
    "top_k",
    "typ_p",
    "top_p",
    "min_p",
    "xtc",
    "temperature",
]
"""llama-server's default chain, in its own names (as `generation_settings` lists it)."""
DEFAULT_DRY_BASE = 1.75
NO_BIAS = -math.inf

BiasPairs = list[tuple[int, float]]
"""`logit_bias` in request order: (token id, bias), `-inf` for a banned token."""


async def logit_bias(backend: Backend, raw: Any) -> BiasPairs:
    """llama.cpp's logit_bias: `[[id or text, bias or false], ...]` or `{"id or text": bias}`.

    Text is tokenized (as plain text, no special tokens) and the bias applies to each of its
    tokens; `false` bans the token. Entries llama.cpp would skip silently are a 400 here.
    """
    if raw is None:
        return []
    entries = list(raw.items()) if isinstance(raw, dict) else raw
    pairs: BiasPairs = []
    for index, entry in enumerate(entries):
        if isinstance(raw, list) and (not isinstance(entry, list) or len(entry) != 2):
            raise InvalidRequest(
                f"`logit_bias[{index}]` must be a [token, bias] pair.", param="logit_bias"
            )
        key, value = entry
        if value is False:
            amount = NO_BIAS
        elif isinstance(value, int | float) and not isinstance(value, bool):
            amount = float(value)
        else:
            raise InvalidRequest(
                f"The bias of `{key}` must be a number or false.", param="logit_bias"
            )
        pairs.extend((token, amount) for token in await _bias_tokens(backend, key))
    return pairs


async def _bias_tokens(backend: Backend, key: Any) -> list[int]:
    if isinstance(key, int) and not isinstance(key, bool):
        return [key]
    if isinstance(key, str) and key.lstrip("-").isdigit():
        return [int(key)]
    if isinstance(key, str) and key:
        return await backend.tokenize(key, add_special=False, parse_special=False)
    raise InvalidRequest(f"Invalid token `{key}` in `logit_bias`.", param="logit_bias")


def sampling(body: NativeSampling, defaults: LlamaCppSettings, bias: BiasPairs) -> SamplingParams:
    """The canonical sampler settings of a native body (llama.cpp's conventions resolved:
    a temperature below 0 is greedy, top_k and top_n_sigma of 0 or less are off, a DRY
    base below 1 is the default)."""
    seed = defaults.seed if body.seed is None else body.seed
    temperature = defaults.temperature if body.temperature is None else body.temperature
    return SamplingParams(
        temperature=max(temperature, 0.0),
        top_k=max(body.top_k, 0),
        top_p=body.top_p,
        min_p=body.min_p,
        typical_p=body.typical_p,
        repeat_penalty=body.repeat_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        penalty_last_n=body.repeat_last_n,
        logit_bias=dict(bias),
        seed=None if seed < 0 else seed,
        order=sampler_order(body.samplers),
        top_n_sigma=max(body.top_n_sigma, 0.0),
        xtc_threshold=body.xtc_threshold,
        xtc_probability=body.xtc_probability,
        dry_multiplier=body.dry_multiplier,
        dry_base=body.dry_base if body.dry_base >= 1.0 else DEFAULT_DRY_BASE,
        dry_allowed_length=body.dry_allowed_length,
        dry_penalty_last_n=body.dry_penalty_last_n,
        dry_sequence_breakers=body.dry_sequence_breakers or list(DEFAULT_DRY_BREAKERS),
        dynatemp_range=body.dynatemp_range,
        dynatemp_exponent=body.dynatemp_exponent,
        mirostat=body.mirostat,
        mirostat_tau=body.mirostat_tau,
        mirostat_eta=body.mirostat_eta,
    )


def constraint(body: NativeSampling) -> Constraint | None:
    if body.grammar and body.json_schema is not None:
        raise InvalidRequest("Give either `grammar` or `json_schema`, not both.")
    if body.grammar:
        return GrammarConstraint(grammar=body.grammar)
    if body.json_schema is not None:
        return JsonSchemaConstraint(schema=body.json_schema)
    return None


def sampler_names(samplers: list[str] | str | None) -> list[str]:
    """llama.cpp's `samplers` (a list of names, or a string of letters like `"kypmt"`) as
    a list of names; the default chain when none is given."""
    if samplers is None:
        return list(DEFAULT_SAMPLERS)
    names = [SAMPLER_LETTERS.get(c, c) for c in samplers] if isinstance(samplers, str) else samplers
    unknown = [name for name in names if name not in CANONICAL_SAMPLERS]
    if unknown:
        raise InvalidRequest(f"Unknown sampler(s) in `samplers`: {', '.join(unknown)}.")
    return [name if name != "typical_p" else "typ_p" for name in names]


def sampler_order(samplers: list[str] | str | None) -> list[SamplerName]:
    """The canonical order of `samplers` (empty: the default chain)."""
    if samplers is None:
        return []
    order = [CANONICAL_SAMPLERS[name] for name in sampler_names(samplers)]
    return [name for name in order if name is not None]


def n_predict(body: NativeSampling, defaults: LlamaCppSettings) -> int:
    """`n_predict`, else OpenAI's `max_completion_tokens` or `max_tokens`, else the default."""
    for value in (body.n_predict, body.max_completion_tokens, body.max_tokens):
        if value is not None:
            return value
    return defaults.n_predict


def generation_request(
    body: NativeSampling,
    defaults: LlamaCppSettings,
    request_id: str,
    model: str,
    prompt: list[int],
    bias: BiasPairs,
    adapters: list[AdapterRef] | None = None,
) -> GenerationRequest:
    """The canonical request of one native sequence, with `adapters` (the body's `lora`
    resolved, see `lora.requested`). `t_max_predict_ms` and `n_indent` are not the
    backend's business: the route stops the sequence (see `completion`)."""
    predict = n_predict(body, defaults)
    return GenerationRequest(
        id=request_id,
        model=model,
        prompt=prompt,
        sampling=sampling(body, defaults, bias),
        stop=[s for s in body.stop if s],
        max_tokens=None if predict < 0 else predict,
        ignore_eos=body.ignore_eos,
        logprobs=body.n_probs > 0,
        top_logprobs=body.n_probs,
        constraint=constraint(body),
        cache_prompt=body.cache_prompt,
        slot=None if body.id_slot < 0 else body.id_slot,
        adapters=adapters,
        # Below 0 the temperature is greedy with plain softmax probabilities (llama.cpp).
        post_sampling_probs=body.post_sampling_probs and not _negative_temperature(body),
    )


def _negative_temperature(body: NativeSampling) -> bool:
    return body.temperature is not None and body.temperature < 0


def stop_type(final: GenerationChunk) -> str:
    if final.finish_reason == "length":
        return "limit"
    if final.finish_reason == "stop":
        return "word" if final.stop_word is not None else "eos"
    return "none"


LOWEST_LOGPROB = -3.4028234663852886e38
"""llama.cpp reports the log of a zero probability as the lowest float, not `-inf`."""


def probabilities(logprobs: list[TokenLogprob], post_sampling: bool) -> list[dict[str, Any]]:
    """`completion_probabilities`: per token its id, text, bytes and log-probability (or,
    with `post_sampling_probs`, probability) with its top alternatives."""
    out = []
    for lp in logprobs:
        entry: dict[str, Any] = {
            "id": lp.token_id,
            "token": lp.token,
            "bytes": lp.bytes or list(lp.token.encode()),
        }
        tops = [
            {"id": t.token_id, "token": t.token, "bytes": t.bytes or list(t.token.encode())}
            | ({"prob": math.exp(t.logprob)} if post_sampling else {"logprob": _log(t.logprob)})
            for t in lp.top
        ]
        if post_sampling:
            entry |= {"prob": math.exp(lp.logprob), "top_probs": tops}
        else:
            entry |= {"logprob": _log(lp.logprob), "top_logprobs": tops}
        out.append(entry)
    return out


def _log(value: float) -> float:
    return max(value, LOWEST_LOGPROB)


def pick_fields(body: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """`response_fields`: keep only these keys (`a/b` reaches into nested objects)."""
    if not fields:
        return body
    picked: dict[str, Any] = {}
    for path in fields:
        node: Any = body
        for part in path.split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            picked[path] = node
    return picked
