"""From llama.cpp's native bodies to canonical requests, and from chunks back to its fields."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from gateway_schemas.canonical import (
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
    "top_k": "top_k",
    "typ_p": "typical_p",
    "typical_p": "typical_p",
    "top_p": "top_p",
    "min_p": "min_p",
    "temperature": "temperature",
    # llama.cpp samplers outside the canonical set; placed in an order, they do nothing.
    "dry": None,
    "xtc": None,
    "top_n_sigma": None,
    "infill": None,
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


async def logit_bias(backend: Backend, raw: Any) -> dict[int, float]:
    """llama.cpp's logit_bias: `[[id or text, bias or false], ...]` or `{"id or text": bias}`.

    Text is tokenized and the bias applies to each of its tokens; `false` bans the token.
    """
    if raw is None:
        return {}
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    bias: dict[int, float] = {}
    for index, pair in enumerate(pairs):
        if isinstance(raw, list) and (not isinstance(pair, list) or len(pair) != 2):
            raise InvalidRequest(
                f"`logit_bias[{index}]` must be a [token, bias] pair.", param="logit_bias"
            )
        key, value = pair
        if value is False:
            amount = -math.inf
        elif isinstance(value, int | float) and not isinstance(value, bool):
            amount = float(value)
        else:
            raise InvalidRequest(
                f"The bias of `{key}` must be a number or false.", param="logit_bias"
            )
        if isinstance(key, int) and not isinstance(key, bool):
            ids = [key]
        elif isinstance(key, str) and key.lstrip("-").isdigit():
            ids = [int(key)]
        elif isinstance(key, str) and key:
            ids = await backend.tokenize(key, add_special=False)
        else:
            raise InvalidRequest(f"Invalid token `{key}` in `logit_bias`.", param="logit_bias")
        for token in ids:
            bias[token] = amount
    return bias


def sampling(
    body: NativeSampling, defaults: LlamaCppSettings, bias: dict[int, float]
) -> SamplingParams:
    seed = defaults.seed if body.seed is None else body.seed
    temperature = defaults.temperature if body.temperature is None else body.temperature
    return SamplingParams(
        temperature=temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        min_p=body.min_p,
        typical_p=body.typical_p,
        repeat_penalty=body.repeat_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        penalty_last_n=body.repeat_last_n,
        logit_bias=bias,
        seed=None if seed < 0 else seed,
        order=sampler_order(body.samplers),
    )


def constraint(body: NativeSampling) -> Constraint | None:
    if body.grammar and body.json_schema is not None:
        raise InvalidRequest("Give either `grammar` or `json_schema`, not both.")
    if body.grammar:
        return GrammarConstraint(grammar=body.grammar)
    if body.json_schema is not None:
        return JsonSchemaConstraint(schema=body.json_schema)
    return None


def sampler_order(samplers: list[str] | str | None) -> list[SamplerName]:
    """llama.cpp's `samplers`: a list of names, or a string of letters (`"kypmt"`)."""
    if samplers is None:
        return []
    names = [SAMPLER_LETTERS.get(c, c) for c in samplers] if isinstance(samplers, str) else samplers
    unknown = [name for name in names if name not in CANONICAL_SAMPLERS]
    if unknown:
        raise InvalidRequest(f"Unknown sampler(s) in `samplers`: {', '.join(unknown)}.")
    order = [CANONICAL_SAMPLERS[name] for name in names]
    return [name for name in order if name is not None]


async def generation_request(
    backend: Backend,
    body: NativeSampling,
    defaults: LlamaCppSettings,
    request_id: str,
    model: str,
    prompt: str | list[int],
) -> GenerationRequest:
    n_predict = defaults.n_predict if body.n_predict is None else body.n_predict
    time_limit = body.t_max_predict_ms / 1000.0 if body.t_max_predict_ms > 0 else None
    return GenerationRequest(
        id=request_id,
        model=model,
        prompt=prompt,
        sampling=sampling(body, defaults, await logit_bias(backend, body.logit_bias)),
        stop=[s for s in body.stop if s],
        max_tokens=None if n_predict < 0 else n_predict,
        ignore_eos=body.ignore_eos,
        logprobs=body.n_probs > 0,
        top_logprobs=body.n_probs,
        constraint=constraint(body),
        cache_prompt=body.cache_prompt,
        slot=None if body.id_slot < 0 else body.id_slot,
        time_limit=time_limit,
        post_sampling_probs=body.post_sampling_probs,
    )


async def prompt_ids(backend: Backend, prompt: str | list[str | int]) -> str | list[int]:
    """A text prompt stays text (the backend adds BOS as the model wants); a list mixing
    token ids and text becomes ids, each text piece tokenized without special tokens."""
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequest("`prompt` is empty.")
        return prompt
    if not prompt:
        raise InvalidRequest("`prompt` is empty.")
    ids: list[int] = []
    for piece in prompt:
        if isinstance(piece, str):
            ids.extend(await backend.tokenize(piece, add_special=False))
        else:
            ids.append(piece)
    return ids


def stop_type(final: GenerationChunk) -> str:
    if final.finish_reason == "length":
        return "limit"
    if final.finish_reason == "stop":
        return "word" if final.stop_word is not None else "eos"
    return "none"


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
            | ({"prob": math.exp(t.logprob)} if post_sampling else {"logprob": t.logprob})
            for t in lp.top
        ]
        if post_sampling:
            entry |= {"prob": math.exp(lp.logprob), "top_probs": tops}
        else:
            entry |= {"logprob": lp.logprob, "top_logprobs": tops}
        out.append(entry)
    return out


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
