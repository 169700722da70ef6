"""Pure transforms between the canonical types and the OpenAI-compatible wire: no I/O.

Canonical -> upstream (`upstream_request`): messages go to `/chat/completions`, a text
prompt to `/completions`, always streamed with `stream_options.include_usage`. OpenAI's
own fields are forwarded (stop, max_tokens, temperature, top_p, presence and frequency
penalties, seed, logit_bias, logprobs, tools, a JSON schema as `response_format`); any
other sampling field set to a value that changes sampling is refused (`InvalidRequest`
naming every such field) unless the upstream declares it in `extra_params` or the
operator set `drop_unsupported`.

Upstream -> canonical (`StreamDecoder`): each stream event becomes at most one text chunk;
tool calls the upstream streams in pieces are written, once complete, as the gateway's
`<tool_call>` blocks (which every dialect's tool parser reads); the end of the stream
becomes the final chunk with the finish reason, usage and its cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway_schemas.canonical import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GrammarConstraint,
    JsonSchemaConstraint,
    Timings,
    TokenLogprob,
    ToolCall,
    ToolDefinition,
    TopLogprob,
    Usage,
)

from gateway.engine.tools import call_block
from gateway.errors import InvalidRequest

CHAT_PATH = "/chat/completions"
TEXT_PATH = "/completions"
UNKNOWN_TOKEN_ID = -1
"""The token id of upstream logprobs: an upstream names tokens by their text only."""

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "stop",
    "function_call": "stop",
    "content_filter": "stop",
    "abort": "abort",
}


class UpstreamStreamError(Exception):
    """The upstream's stream said it failed (an `error` event) or broke its shape."""


# ---- canonical -> upstream --------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A canonical setting that OpenAI's API lacks: its name in messages, whether a request
    uses it, and the upstream field (`extra_params` names) that can carry it, if any."""

    name: str
    used: Callable[[GenerationRequest], bool]
    wire: tuple[str, ...] = ()
    value: Callable[[GenerationRequest], Any] | None = None


def _grammar(request: GenerationRequest) -> str | None:
    constraint = request.constraint
    return constraint.grammar if isinstance(constraint, GrammarConstraint) else None


NON_OPENAI: tuple[Field, ...] = (
    Field("top_k", lambda r: r.sampling.top_k > 0, ("top_k",), lambda r: r.sampling.top_k),
    Field("min_p", lambda r: r.sampling.min_p > 0, ("min_p",), lambda r: r.sampling.min_p),
    Field(
        "typical_p",
        lambda r: r.sampling.typical_p < 1,
        ("typical_p",),
        lambda r: r.sampling.typical_p,
    ),
    Field(
        "repetition_penalty",
        lambda r: r.sampling.repeat_penalty != 1.0,
        ("repetition_penalty", "repeat_penalty"),
        lambda r: r.sampling.repeat_penalty,
    ),
    Field("ignore_eos", lambda r: r.ignore_eos, ("ignore_eos",), lambda r: True),
    Field("grammar", lambda r: _grammar(r) is not None, ("grammar",), _grammar),
    Field(
        "repeat_penalty_slope",
        lambda r: r.sampling.repeat_penalty != 1.0 and r.sampling.repeat_penalty_slope > 0,
    ),
    Field("tfs", lambda r: r.sampling.tfs < 1),
    Field("top_a", lambda r: r.sampling.top_a > 0),
    Field("top_n_sigma", lambda r: r.sampling.top_n_sigma > 0),
    Field("xtc_probability", lambda r: r.sampling.xtc_probability > 0),
    Field("dry_multiplier", lambda r: r.sampling.dry_multiplier > 0),
    Field("dynatemp_range", lambda r: r.sampling.dynatemp_range > 0),
    Field("smoothing_factor", lambda r: r.sampling.smoothing_factor > 0),
    Field("mirostat", lambda r: r.sampling.mirostat != 0),
    Field("banned_sequences", lambda r: bool(r.sampling.banned_sequences)),
    Field("post_sampling_probs", lambda r: r.post_sampling_probs),
    Field("adapters", lambda r: bool(r.adapters)),
    Field("slot", lambda r: r.slot is not None),
    Field(
        "response_format",
        lambda r: r.messages is None and isinstance(r.constraint, JsonSchemaConstraint),
        ("response_format",),
        lambda r: _response_format(r.constraint),
    ),
)
"""Settings outside OpenAI's API. Left out on purpose, as they change nothing upstream:
`order` and `penalty_last_n` (the local sampler chain and its window), `cache_prompt`."""


def unsupported(request: GenerationRequest, accepted: frozenset[str]) -> list[str]:
    """The names of the fields `request` uses that an upstream accepting `accepted` lacks."""
    return [
        f.name for f in NON_OPENAI if f.used(request) and not any(w in accepted for w in f.wire)
    ]


def check_supported(request: GenerationRequest, accepted: frozenset[str], model: str) -> None:
    """Refuse a request using fields the upstream lacks, naming all of them."""
    missing = unsupported(request, accepted)
    if not missing:
        return
    names = ", ".join(f"`{name}`" for name in missing)
    raise InvalidRequest(
        f"The upstream of model `{model}` does not support {names}: leave "
        f"{'it' if len(missing) == 1 else 'them'} at the default, or let the gateway drop "
        "what an upstream lacks (`[teacher] drop_unsupported = true`).",
        param=missing[0],
        code="unsupported_parameter",
    )


def prompt_text(prompt: str | list[int] | None) -> str:
    """A text prompt as is; token ids as the bytes of UTF-8 text (`tokenize`'s ids, which
    the llama.cpp and Kobold routes send); other ids are refused."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if any(not 0 <= token < 256 for token in prompt):
        raise InvalidRequest(
            "A teacher model takes text prompts: token ids are not forwarded to its upstream "
            "(only the byte ids of its own /tokenize are read back as text).",
            param="prompt",
        )
    try:
        return bytes(prompt).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The prompt's token ids are not UTF-8 text.", param="prompt") from None


def _response_format(constraint: object) -> dict[str, Any] | None:
    if not isinstance(constraint, JsonSchemaConstraint):
        return None
    if constraint.schema in ({}, {"type": "object"}):
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": constraint.schema}}


def message_json(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        if not message.content:
            out["content"] = None
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def tool_json(tool: ToolDefinition) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def upstream_request(
    request: GenerationRequest,
    model: str,
    accepted: frozenset[str],
    *,
    max_tokens_field: str = "max_tokens",
) -> tuple[str, dict[str, Any]]:
    """The path and JSON body that ask `model` upstream for `request`, streamed. Fields the
    upstream lacks are left out: call `check_supported` first unless they may be dropped."""
    body: dict[str, Any] = {"model": model}
    chat = request.messages is not None
    if chat:
        body["messages"] = [message_json(m) for m in request.messages or []]
        if request.tools:
            body["tools"] = [tool_json(t) for t in request.tools]
    else:
        body["prompt"] = prompt_text(request.prompt)
    sampling = request.sampling
    if sampling.temperature != 1.0:
        body["temperature"] = sampling.temperature
    if sampling.top_p != 1.0:
        body["top_p"] = sampling.top_p
    if sampling.presence_penalty:
        body["presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        body["frequency_penalty"] = sampling.frequency_penalty
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias.items()}
    if request.stop:
        body["stop"] = list(request.stop)
    if request.max_tokens is not None:
        body[max_tokens_field if chat else "max_tokens"] = request.max_tokens
    if request.logprobs or request.top_logprobs:
        if chat:
            body["logprobs"] = True
            if request.top_logprobs:
                body["top_logprobs"] = request.top_logprobs
        else:
            body["logprobs"] = request.top_logprobs
    if chat and isinstance(request.constraint, JsonSchemaConstraint):
        body["response_format"] = _response_format(request.constraint)
    for extra in NON_OPENAI:
        wire = next((w for w in extra.wire if w in accepted), None)
        if wire is not None and extra.value is not None and extra.used(request):
            body[wire] = extra.value(request)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return CHAT_PATH if chat else TEXT_PATH, body


# ---- upstream -> canonical --------------------------------------------------------------


@dataclass
class _CallDraft:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _top(entries: Iterable[dict[str, Any]]) -> list[TopLogprob]:
    return [
        TopLogprob(
            token=e.get("token", ""),
            token_id=UNKNOWN_TOKEN_ID,
            logprob=float(e.get("logprob", 0.0)),
            bytes=e.get("bytes"),
        )
        for e in entries
    ]


def chat_logprobs(raw: Any) -> list[TokenLogprob]:
    """OpenAI's chat `logprobs.content` as canonical logprobs."""
    if not isinstance(raw, dict):
        return []
    return [
        TokenLogprob(
            token=e.get("token", ""),
            token_id=UNKNOWN_TOKEN_ID,
            logprob=float(e.get("logprob", 0.0)),
            bytes=e.get("bytes"),
            top=_top(e.get("top_logprobs") or []),
        )
        for e in raw.get("content") or []
    ]


def text_logprobs(raw: Any) -> list[TokenLogprob]:
    """A text completion's `logprobs` (`tokens`, `token_logprobs`, `top_logprobs`)."""
    if not isinstance(raw, dict):
        return []
    tokens = raw.get("tokens") or []
    values = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    out = []
    for token, value, top in zip(tokens, values, tops, strict=False):
        alternatives = [{"token": t, "logprob": lp} for t, lp in (top or {}).items()]
        out.append(
            TokenLogprob(
                token=token,
                token_id=UNKNOWN_TOKEN_ID,
                logprob=float(value or 0.0),
                top=_top(alternatives),
            )
        )
    return out


class StreamDecoder:
    """Turns the JSON events of one upstream stream into canonical chunks.

    `feed` takes each event (a chat or text completion chunk, or a whole non-streamed
    response) and returns its text chunk, if any; `finish` returns the chunks that end
    the stream: the completed tool calls as text, then the final chunk.
    """

    def __init__(self, stop: Iterable[str] = ()):
        self.stop = set(stop)
        self.finish_reason: str | None = None
        self.stop_reason: Any = None
        self.usage: dict[str, Any] | None = None
        self.calls: dict[int, _CallDraft] = {}
        self.started = time.perf_counter()
        self.first: float | None = None

    def feed(self, event: dict[str, Any]) -> GenerationChunk | None:
        error = event.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamStreamError(str(message or error))
        usage = event.get("usage")
        if usage:
            self.usage = usage
        choices = event.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        delta = choice.get("delta") or choice.get("message")
        if delta is not None:
            text = delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                self._call(call)
            logprobs = chat_logprobs(choice.get("logprobs"))
        else:
            text = choice.get("text") or ""
            logprobs = text_logprobs(choice.get("logprobs"))
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            self.stop_reason = choice.get("stop_reason")
        if not text and not logprobs:
            return None
        if self.first is None:
            self.first = time.perf_counter()
        return GenerationChunk(text=text, logprobs=logprobs)

    def _call(self, call: dict[str, Any]) -> None:
        draft = self.calls.setdefault(int(call.get("index", len(self.calls))), _CallDraft())
        draft.id = call.get("id") or draft.id
        function = call.get("function") or {}
        draft.name = function.get("name") or draft.name
        if function.get("arguments"):
            draft.arguments.append(function["arguments"])

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def finish(
        self, per_token: tuple[float, float] | None, *, reason: FinishReason | None = None
    ) -> list[GenerationChunk]:
        """The closing chunks. `per_token` (USD per prompt and completion token) prices
        the usage; `reason` overrides the upstream's (`length` for a time limit)."""
        chunks = []
        if self.calls:
            blocks = [
                call_block(ToolCall(id=d.id, name=d.name, arguments="".join(d.arguments) or "{}"))
                for _, d in sorted(self.calls.items())
            ]
            chunks.append(GenerationChunk(text="\n".join(blocks)))
        usage = self._usage(per_token)
        ended = time.perf_counter()
        first = self.first or ended
        final_reason = reason or _FINISH.get(self.finish_reason or "stop", "stop")
        stop_word = self.stop_reason if final_reason == "stop" else None
        chunks.append(
            GenerationChunk(
                finish_reason=final_reason,
                stop_word=stop_word if stop_word in self.stop else None,
                usage=usage,
                timings=Timings(
                    prompt_n=usage.prompt_tokens,
                    prompt_ms=(first - self.started) * 1000,
                    predicted_n=usage.completion_tokens,
                    predicted_ms=(ended - first) * 1000,
                ),
            )
        )
        return chunks

    def _usage(self, per_token: tuple[float, float] | None) -> Usage:
        raw = self.usage or {}
        prompt = int(raw.get("prompt_tokens") or 0)
        completion = int(raw.get("completion_tokens") or 0)
        details = raw.get("prompt_tokens_details") or {}
        cost = None
        if per_token is not None and self.usage is not None:
            cost = prompt * per_token[0] + completion * per_token[1]
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=int(details.get("cached_tokens") or 0),
            cost=cost,
        )
