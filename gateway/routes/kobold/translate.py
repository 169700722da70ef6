"""From KoboldAI's GenerationInput to a canonical request, with KoboldCpp's clamps.

KoboldCpp refuses almost no value: it clamps, or a sampler given a value outside its
range simply does nothing. The same here, so that what a Kobold frontend sends always
generates:

- `max_context_length` is at most the model's context; `max_length` is cut so that a
  fifth of that context (at least 16 tokens, when there are that many) is left to the
  prompt, as KoboldCpp cuts it. `max_length` below 1 is 1.
- The model's BOS token (when it adds one) comes first, then `memory`, cut from its
  start when it leaves less than 4 tokens of slack, then `prompt`, cut from its start to
  fit. With no prompt left the model starts from the BOS token alone (KoboldCpp's blank
  prompt), or from a newline for a model without one.
- `temperature`, `top_k`, `top_a`, `nsigma`, smoothing and the mirostat rates below 0 are
  0 (greedy, or off); `top_p`, `min_p`, `typical`, `tfs` and the XTC values are held to
  [0, 1]; XTC is off above a threshold of 0.5; `mirostat` other than 1 or 2 is off.
- The repetition penalty is the largest of `rep_pen`, `repeat_penalty` and
  `repetition_penalty`; `rep_pen_range` below 1 is 1; `rep_pen_slope` outside (0, 1) is
  a flat penalty (KoboldCpp's slope 1).
- DRY: `dry_base` at or below 0 switches DRY off and between 0 and 1 is 1;
  `dry_penalty_last_n` at or below 0 covers the whole context.
- `sampler_seed` at or below 0 is a random seed. `sampler_order` ignores unknown ids and
  applies a repeated id once; an empty list, or one longer than 7, is the default order.
- `logit_bias` skips entries that do not parse, negative ids, ids outside the vocabulary
  and zero biases, holds biases to [-100, 100] and keeps 512 of them.
- A `grammar` that is a JSON object is a JSON schema (KoboldCpp converts it to GBNF).
- The gateway's `adapter` / `adapters` are read as on the OpenAI routes: both at once is a
  400, as is an adapter the model's store lacks (404).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Literal

from gateway_schemas.canonical import (
    ChatMessage,
    Constraint,
    GenerationRequest,
    GrammarConstraint,
    JsonSchemaConstraint,
    SamplerName,
    SamplingParams,
)
from gateway_schemas.kobold import DEFAULT_SAMPLER_ORDER, GenerationInput
from gateway_schemas.openai import SamplingExtras

from gateway.errors import InvalidRequest
from gateway.routes.openai import translate as openai

if TYPE_CHECKING:
    from gateway.engine import Backend

KOBOLD_SAMPLERS: dict[int, SamplerName] = {
    0: "top_k",
    1: "top_a",
    2: "top_p",
    3: "tfs",
    4: "typical_p",
    5: "temperature",
    6: "penalties",
}
MIROSTAT: dict[int, Literal[1, 2]] = {1: 1, 2: 2}
INPUT_TAG, OUTPUT_TAG = "{{[INPUT]}}", "{{[OUTPUT]}}"
SAMPLER_ORDER_MAX = 7
BIAS_MIN, BIAS_MAX = -100.0, 100.0
LOGIT_BIAS_MAX, BANNED_MAX, DRY_BREAKERS_MAX = 512, 768, 128
XTC_THRESHOLD_MAX = 0.5


def sampler_order(ids: list[int]) -> list[SamplerName]:
    """Kobold's `sampler_order` (ids 0-6) as a canonical order. The samplers Kobold does not
    number take llama.cpp's places: DRY after the penalties, top-n-sigma first among the
    filters, min-p and XTC just before temperature."""
    if not ids or len(ids) > SAMPLER_ORDER_MAX:
        ids = DEFAULT_SAMPLER_ORDER
    named = dict.fromkeys(KOBOLD_SAMPLERS[i] for i in ids if i in KOBOLD_SAMPLERS)
    order: list[SamplerName] = ["top_n_sigma"]
    for name in named:
        if name == "temperature":
            order += ["min_p", "xtc"]
        order.append(name)
        if name == "penalties":
            order.append("dry")
    for extra in ("min_p", "xtc", "dry"):
        if extra not in order:
            order.append(extra)
    return order


def _unit(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def dry_breakers(raw: list[str] | str) -> list[str]:
    """The sequence breakers, also from a JSON-encoded list (SillyTavern's form); text that
    is not such a list means none, as in KoboldCpp."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
        if not isinstance(raw, list):
            return []
    return [b for b in raw if isinstance(b, str) and b][:DRY_BREAKERS_MAX]


def sampling(
    body: GenerationInput, bias: dict[int, float], banned: list[list[int]]
) -> SamplingParams:
    penalty = max(body.rep_pen, body.repeat_penalty, body.repetition_penalty)
    xtc_on = body.xtc_threshold <= XTC_THRESHOLD_MAX
    return SamplingParams(
        temperature=max(body.temperature, 0.0),
        top_k=max(body.top_k, 0),
        top_p=_unit(body.top_p),
        min_p=_unit(body.min_p),
        typical_p=_unit(body.typical),
        repeat_penalty=penalty if penalty > 0.0 else 1.0,
        presence_penalty=body.presence_penalty,
        penalty_last_n=max(body.rep_pen_range, 1),
        repeat_penalty_slope=body.rep_pen_slope if 0.0 < body.rep_pen_slope < 1.0 else 0.0,
        logit_bias=bias,
        seed=body.sampler_seed if body.sampler_seed > 0 else None,
        order=sampler_order(body.sampler_order),
        top_a=max(body.top_a, 0.0),
        tfs=_unit(body.tfs),
        top_n_sigma=max(body.nsigma, 0.0),
        xtc_threshold=_unit(body.xtc_threshold),
        xtc_probability=_unit(body.xtc_probability) if xtc_on else 0.0,
        dry_multiplier=max(body.dry_multiplier, 0.0) if body.dry_base > 0.0 else 0.0,
        dry_base=max(body.dry_base, 1.0),
        dry_allowed_length=max(body.dry_allowed_length, 0),
        dry_penalty_last_n=body.dry_penalty_last_n if body.dry_penalty_last_n > 0 else -1,
        dry_sequence_breakers=dry_breakers(body.dry_sequence_breakers),
        dynatemp_range=max(body.dynatemp_range, 0.0),
        dynatemp_exponent=max(body.dynatemp_exponent, 0.0),
        smoothing_factor=max(body.smoothing_factor, 0.0),
        mirostat=MIROSTAT.get(body.mirostat, 0),
        mirostat_tau=max(body.mirostat_tau, 0.0),
        mirostat_eta=max(body.mirostat_eta, 0.0),
        banned_sequences=banned,
    )


def _bias_entry(key: str, value: object) -> tuple[int, float] | None:
    try:
        token, amount = int(key), float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    if token < 0 or amount == 0.0 or math.isnan(amount):
        return None
    return token, min(max(amount, BIAS_MIN), BIAS_MAX)


async def _in_vocabulary(backend: Backend, bias: dict[int, float]) -> dict[int, float]:
    """The entries whose token id the model's tokenizer knows (KoboldCpp skips the rest)."""
    try:
        await backend.detokenize(list(bias))
        return bias
    except InvalidRequest:
        pass
    known = {}
    for token, amount in bias.items():
        try:
            await backend.detokenize([token])
        except InvalidRequest:
            continue
        known[token] = amount
    return known


async def logit_bias(backend: Backend, body: GenerationInput) -> dict[int, float]:
    """`logit_bias` and `custom_token_bans` as one canonical bias."""
    bias = dict(
        entry
        for key, value in list(body.logit_bias.items())[:LOGIT_BIAS_MAX]
        if (entry := _bias_entry(key, value)) is not None
    )
    for piece in body.custom_token_bans.split(","):
        if piece.strip().isdigit():
            bias[int(piece.strip())] = BIAS_MIN
    return await _in_vocabulary(backend, bias) if bias else bias


async def banned_sequences(backend: Backend, body: GenerationInput) -> list[list[int]]:
    """Each banned phrase as token sequences: as written and after a space."""
    phrases = body.banned_tokens if body.banned_tokens is not None else body.banned_strings
    sequences: list[list[int]] = []
    for phrase in phrases[:BANNED_MAX]:
        if not phrase:
            continue
        for text in (phrase, " " + phrase.lstrip()):
            ids = await backend.tokenize(text, add_special=False)
            if ids and ids not in sequences:
                sequences.append(ids)
    return sequences


async def instruct_tags(backend: Backend) -> tuple[str, str]:
    """The model's own text for `{{[INPUT]}}` (start of a user turn) and `{{[OUTPUT]}}`
    (end of it and start of the reply), cut out of its chat template."""
    rendered = await backend.render_chat(
        [
            ChatMessage(role="user", content="\x01"),
            ChatMessage(role="assistant", content="\x02"),
            ChatMessage(role="user", content="\x03"),
        ]
    )
    output = rendered.split("\x01", 1)[1].split("\x02", 1)[0]
    user = rendered.split("\x02", 1)[1].split("\x03", 1)[0]
    return user, output


def limits(body: GenerationInput, context: int, default_length: int) -> tuple[int, int]:
    """The request's context and generation length, clamped as KoboldCpp clamps them."""
    max_context = body.max_context_length or context
    max_context = min(max(max_context, 1), context)
    max_length = max(body.max_length if body.max_length is not None else default_length, 1)
    keep = max(min(max_context - 4, 16), int(max_context * 0.2))
    if max_length >= max_context - keep:
        max_length = max(max_context - keep, 1)
    return max_context, max_length


async def prompt_ids(
    backend: Backend, body: GenerationInput, max_context: int, max_length: int
) -> list[int]:
    """The model's BOS token (when it adds one), `memory`, then `prompt`, cut from their
    starts so that all of it and the generation fit `max_context`: the memory only when
    it leaves less than KoboldCpp's slack of 4 tokens, then the prompt."""
    memory, prompt = body.memory, body.prompt
    if body.replace_instruct_placeholders:
        user, output = await instruct_tags(backend)
        memory = memory.replace(INPUT_TAG, user).replace(OUTPUT_TAG, output)
        prompt = prompt.replace(INPUT_TAG, user).replace(OUTPUT_TAG, output)
    bos = await backend.tokenize("", add_special=True)
    head = await backend.tokenize(memory, add_special=False) if memory else []
    tail = await backend.tokenize(prompt, add_special=False) if prompt else []
    room = max_context - max_length - len(bos)
    if head and len(head) + 4 > room:
        head = head[len(head) - (room - 4) :] if room > 4 else []
    budget = room - len(head)
    tail = tail[max(len(tail) - budget, 0) :] if budget > 0 else []
    return bos + head + tail or await backend.tokenize("\n", add_special=False)


def constraint(grammar: str) -> Constraint | None:
    if not grammar.strip():
        return None
    try:
        schema = json.loads(grammar)
    except ValueError:
        schema = None
    if isinstance(schema, dict):
        return JsonSchemaConstraint(schema=schema)
    return GrammarConstraint(grammar=grammar)


async def generation_request(
    backend: Backend,
    body: GenerationInput,
    request_id: str,
    model: str,
    max_context: int,
    max_length: int,
) -> GenerationRequest:
    ban_eos = body.ban_eos_token
    if ban_eos is None:
        ban_eos = body.use_default_badwordsids
    bias = await logit_bias(backend, body)
    banned = await banned_sequences(backend, body)
    return GenerationRequest(
        id=request_id,
        model=model,
        prompt=await prompt_ids(backend, body, max_context, max_length),
        sampling=sampling(body, bias, banned),
        stop=[s for s in body.stop_sequence if s],
        max_tokens=max_length,
        ignore_eos=ban_eos or body.bypass_eos,
        logprobs=body.logprobs,
        top_logprobs=5 if body.logprobs else 0,
        constraint=constraint(body.grammar),
        adapters=openai.adapters(SamplingExtras(adapter=body.adapter, adapters=body.adapters)),
    )
