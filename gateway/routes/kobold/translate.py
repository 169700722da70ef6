"""From KoboldAI's GenerationInput to a canonical request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway_schemas.canonical import (
    ChatMessage,
    GenerationRequest,
    GrammarConstraint,
    SamplerName,
    SamplingParams,
)
from gateway_schemas.kobold import GenerationInput

from gateway.errors import InvalidRequest, Unsupported

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
INPUT_TAG, OUTPUT_TAG = "{{[INPUT]}}", "{{[OUTPUT]}}"


def sampler_order(ids: list[int]) -> list[SamplerName]:
    """Kobold's `sampler_order` (ids 0-6) as a canonical order. The samplers Kobold does not
    number take llama.cpp's places: DRY after the penalties, top-n-sigma first among the
    filters, min-p and XTC just before temperature."""
    if len(set(ids)) != len(ids) or any(i not in KOBOLD_SAMPLERS for i in ids):
        raise InvalidRequest(
            "`sampler_order` must list distinct sampler ids from 0 to 6 "
            "(0 top_k, 1 top_a, 2 top_p, 3 tfs, 4 typical, 5 temperature, 6 rep_pen)."
        )
    order: list[SamplerName] = ["top_n_sigma"]
    for index in ids:
        name = KOBOLD_SAMPLERS[index]
        if name == "temperature":
            order += ["min_p", "xtc"]
        order.append(name)
        if name == "penalties":
            order.append("dry")
    for name in ("min_p", "xtc", "dry"):
        if name not in order:
            order.append(name)
    return order


def sampling(
    body: GenerationInput, bias: dict[int, float], banned: list[list[int]]
) -> SamplingParams:
    return SamplingParams(
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        min_p=body.min_p,
        typical_p=body.typical,
        repeat_penalty=body.rep_pen,
        penalty_last_n=body.rep_pen_range if body.rep_pen_range > 0 else -1,
        repeat_penalty_slope=body.rep_pen_slope,
        logit_bias=bias,
        seed=None if body.sampler_seed < 0 else body.sampler_seed,
        order=sampler_order(body.sampler_order),
        top_a=body.top_a,
        tfs=body.tfs,
        top_n_sigma=body.nsigma,
        xtc_threshold=body.xtc_threshold,
        xtc_probability=body.xtc_probability,
        dry_multiplier=body.dry_multiplier,
        dry_base=body.dry_base,
        dry_allowed_length=body.dry_allowed_length,
        dry_penalty_last_n=body.dry_penalty_last_n if body.dry_penalty_last_n > 0 else -1,
        dry_sequence_breakers=body.dry_sequence_breakers,
        dynatemp_range=max(body.dynatemp_range, 0.0),
        dynatemp_exponent=body.dynatemp_exponent,
        smoothing_factor=body.smoothing_factor,
        mirostat=body.mirostat,
        mirostat_tau=body.mirostat_tau,
        mirostat_eta=body.mirostat_eta,
        banned_sequences=banned,
    )


def logit_bias(raw: dict[str, float]) -> dict[int, float]:
    bias = {}
    for key, value in raw.items():
        try:
            bias[int(key)] = value
        except ValueError:
            raise InvalidRequest(f"`logit_bias` keys are token ids, not `{key}`.") from None
    return bias


async def banned_sequences(backend: Backend, phrases: list[str]) -> list[list[int]]:
    """Each banned phrase as token sequences: as written and after a space."""
    sequences: list[list[int]] = []
    for phrase in phrases:
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


async def prompt_ids(
    backend: Backend, body: GenerationInput, max_context: int, max_length: int
) -> list[int]:
    """`memory` then `prompt`, cut from the start of `prompt` so that the prompt and the
    generation fit `max_context` (the memory is always kept)."""
    memory, prompt = body.memory, body.prompt
    if body.replace_instruct_placeholders:
        user, output = await instruct_tags(backend)
        memory = memory.replace(INPUT_TAG, user).replace(OUTPUT_TAG, output)
        prompt = prompt.replace(INPUT_TAG, user).replace(OUTPUT_TAG, output)
    head = await backend.tokenize(memory, add_special=True) if memory else []
    tail = await backend.tokenize(prompt, add_special=not head) if prompt else []
    budget = max_context - max_length - len(head)
    if budget < 1:
        raise InvalidRequest(
            f"`memory` ({len(head)} tokens) and `max_length` ({max_length}) leave no room "
            f"for the prompt in `max_context_length` ({max_context})."
        )
    ids = head + tail[-budget:]
    if not ids:
        raise InvalidRequest("The prompt is empty.")
    return ids


async def generation_request(
    backend: Backend,
    body: GenerationInput,
    request_id: str,
    model: str,
    max_context: int,
    max_length: int,
) -> GenerationRequest:
    if body.images:
        raise Unsupported(f"Model `{model}` cannot read images (`images`).")
    bias = logit_bias(body.logit_bias)
    banned = await banned_sequences(backend, body.banned_tokens)
    return GenerationRequest(
        id=request_id,
        model=model,
        prompt=await prompt_ids(backend, body, max_context, max_length),
        sampling=sampling(body, bias, banned),
        stop=[s for s in body.stop_sequence if s],
        max_tokens=max_length,
        ignore_eos=body.use_default_badwordsids or body.bypass_eos,
        logprobs=body.logprobs,
        top_logprobs=5 if body.logprobs else 0,
        constraint=GrammarConstraint(grammar=body.grammar) if body.grammar else None,
    )
