"""Pure translation between OpenAI bodies and the canonical generation contract."""

from __future__ import annotations

import msgspec
from gateway_schemas.canonical import (
    AdapterRef,
    ChatMessage,
    Constraint,
    GenerationRequest,
    GrammarConstraint,
    JsonSchemaConstraint,
    SamplingParams,
    Timings,
    TokenLogprob,
    Usage,
)
from gateway_schemas.openai import (
    ChatCompletionRequest,
    ChatMessageIn,
    ChoiceLogprobs,
    CompletionLogprobs,
    CompletionRequest,
    PromptTokensDetails,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    ResponseFormatText,
    SamplingExtras,
    TextPart,
    TimingsOut,
    TokenLogprobOut,
    TopLogprobOut,
    UsageOut,
)
from msgspec import UNSET, UnsetType

from gateway.errors import InvalidRequest, Unsupported
from gateway.routes.openai import tools
from gateway.services.prompts import prompt_batch

# The canonical `abort` (client gone, or aborted by an operator) has no OpenAI name.
_FINISH = {"stop": "stop", "length": "length", "abort": "stop"}


def finish_reason(reason: str | None) -> str | None:
    return None if reason is None else _FINISH.get(reason, reason)


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > 16:
        raise InvalidRequest("At most 16 stop sequences are allowed.", param="stop")
    return stops


def sampling(body: SamplingExtras, choice: int) -> SamplingParams:
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        try:
            bias[int(key)] = value
        except ValueError:
            raise InvalidRequest(
                f"Invalid key `{key}` in `logit_bias`: keys are token ids.", param="logit_bias"
            ) from None
    params = SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(body.top_k or 0, 0),
        min_p=body.min_p or 0.0,
        typical_p=1.0 if body.typical_p is None else body.typical_p,
        repeat_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=bias,
        # n choices from one seed must differ and still be reproducible.
        seed=None if body.seed is None else body.seed + choice,
    )
    return params


def constraint(body: SamplingExtras) -> Constraint | None:
    """The output constraint a body asks for: at most one of `response_format` (JSON),
    `json_schema` and `grammar`."""
    given = [
        name
        for name, value in (
            ("response_format", body.response_format),
            ("json_schema", body.json_schema),
            ("grammar", body.grammar),
        )
        if value is not None and not isinstance(value, ResponseFormatText)
    ]
    if len(given) > 1:
        raise InvalidRequest(
            f"Give at most one of {', '.join(f'`{g}`' for g in given)}.", param=given[1]
        )
    if body.grammar is not None:
        return GrammarConstraint(grammar=body.grammar)
    if body.json_schema is not None:
        return JsonSchemaConstraint(schema=body.json_schema)
    fmt = body.response_format
    if isinstance(fmt, ResponseFormatJsonObject):
        return JsonSchemaConstraint(schema={"type": "object"})
    if isinstance(fmt, ResponseFormatJsonSchema):
        return JsonSchemaConstraint(schema=fmt.json_schema.schema)
    return None


def _message(index: int, message: ChatMessageIn) -> ChatMessage:
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, TextPart):
                raise Unsupported(
                    f"Content parts of type `{part.__struct_config__.tag}` are not supported: "
                    "this model reads text only.",
                    param=f"messages[{index}].content",
                )
            texts.append(part.text)
        content = "".join(texts)
    role = "system" if message.role == "developer" else message.role
    return ChatMessage(
        role=role,
        content=content or "",
        name=message.name,
        tool_calls=tools.history_calls(index, message),
        tool_call_id=message.tool_call_id if message.role == "tool" else None,
    )


def chat_requests(
    body: ChatCompletionRequest,
    request_id: str,
    model: str,
    tool_plan: tools.ToolPlan = tools.NO_TOOLS,
) -> list[GenerationRequest]:
    """One canonical request per choice; `tool_plan` (from `tools.plan(body)`) says which
    tools the prompt shows and whether a call is forced."""
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequest("`top_logprobs` requires `logprobs` to be true.", param="top_logprobs")
    tools.check_tool_results(body.messages)
    messages = [_message(i, m) for i, m in enumerate(body.messages)]
    return [
        GenerationRequest(
            id=f"{request_id}-{choice}",
            model=model,
            messages=messages,
            sampling=sampling(body, choice),
            stop=stop_list(body.stop),
            max_tokens=body.max_completion_tokens or body.max_tokens,
            ignore_eos=body.ignore_eos,
            logprobs=body.logprobs,
            top_logprobs=body.top_logprobs or 0,
            constraint=tool_plan.constraint or constraint(body),
            tools=tool_plan.tools,
            adapters=adapters(body),
        )
        for choice in range(body.n)
    ]


def completion_requests(
    body: CompletionRequest, request_id: str, model: str
) -> list[GenerationRequest]:
    if body.suffix:
        raise Unsupported("`suffix` (insertion) is not supported by this model.", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise Unsupported("`best_of` different from `n` is not supported.", param="best_of")
    requests = []
    for p_index, prompt in enumerate(prompt_batch(body.prompt, "prompt")):
        for choice in range(body.n):
            requests.append(
                GenerationRequest(
                    id=f"{request_id}-{p_index}-{choice}",
                    model=model,
                    prompt=prompt,
                    sampling=sampling(body, choice),
                    stop=stop_list(body.stop),
                    max_tokens=body.max_tokens,
                    ignore_eos=body.ignore_eos,
                    logprobs=body.logprobs is not None,
                    top_logprobs=body.logprobs or 0,
                    constraint=constraint(body),
                    adapters=adapters(body),
                )
            )
    return requests


def adapters(body: SamplingExtras) -> list[AdapterRef] | None:
    """Kiln's `adapter` / `adapters`: None (neither given) lets the server default serve;
    `adapter: null` is the base model."""
    if body.adapter is not UNSET and body.adapters is not None:
        raise InvalidRequest(
            "Give either `adapter` or `adapters`, not both.",
            param="adapters",
            code="invalid_compose_request",
        )
    if body.adapters is not None:
        return [AdapterRef(name=a.name, scale=a.scale) for a in body.adapters]
    if body.adapter is UNSET:
        return None
    return [] if body.adapter is None else [AdapterRef(name=body.adapter, scale=1.0)]


def usage(usages: list[Usage | None], prompts: int) -> UsageOut:
    """One usage for a response: each distinct prompt counted once, every completion counted."""
    known = [u for u in usages if u is not None]
    per_choice = max(len(known) // max(prompts, 1), 1)
    prompt_tokens = sum(u.prompt_tokens for u in known[::per_choice])
    cached = sum(u.cached_tokens for u in known[::per_choice])
    completion_tokens = sum(u.completion_tokens for u in known)
    return UsageOut(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def timings(parts: list[Timings | None]) -> TimingsOut | UnsetType:
    """llama.cpp-style timings of a response; several choices ran side by side, so token
    counts add up and times are the longest of them."""
    known = [t for t in parts if t is not None]
    if not known:
        return msgspec.UNSET
    merged = Timings(
        prompt_n=sum(t.prompt_n for t in known),
        prompt_ms=max(t.prompt_ms for t in known),
        predicted_n=sum(t.predicted_n for t in known),
        predicted_ms=max(t.predicted_ms for t in known),
        cache_n=sum(t.cache_n for t in known),
    )
    return msgspec.convert(merged.to_dict(), TimingsOut)


def partial_timings(predicted: int, started: float, now: float) -> TimingsOut:
    """Timings of a stream so far (`timings_per_token`): output tokens and their pace."""
    elapsed = (now - started) * 1000.0
    return TimingsOut(
        cache_n=0,
        prompt_n=0,
        prompt_ms=0.0,
        prompt_per_token_ms=0.0,
        prompt_per_second=0.0,
        predicted_n=predicted,
        predicted_ms=elapsed,
        predicted_per_token_ms=elapsed / predicted if predicted else 0.0,
        predicted_per_second=predicted / elapsed * 1000.0 if elapsed > 0 else 0.0,
    )


def chat_logprobs(logprobs: list[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprobOut(
                token=lp.token,
                logprob=lp.logprob,
                bytes=lp.bytes,
                top_logprobs=[
                    TopLogprobOut(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top
                ],
            )
            for lp in logprobs
        ]
    )


def completion_logprobs(logprobs: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return CompletionLogprobs(
        tokens=[lp.token for lp in logprobs],
        token_logprobs=[lp.logprob for lp in logprobs],
        top_logprobs=[{t.token: t.logprob for t in lp.top} for lp in logprobs],
        text_offset=offsets,
    )


def encode_event(payload: msgspec.Struct | dict[str, object]) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"
