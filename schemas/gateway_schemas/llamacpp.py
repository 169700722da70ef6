"""llama.cpp server wire types: /completion, /infill, /tokenize, /detokenize,
/apply-template, /embedding(s), /rerank, /props, /slots, the token-counting routes, and
its error shape.

Field names and defaults follow llama.cpp's server (tools/server/README.md and what the
server reports in `generation_settings`): temperature 0.8, top_k 40, top_p 0.95, min_p
0.05, repeat_penalty 1.0, DRY over the whole context. Unknown fields are ignored, as
llama.cpp does; known ones are validated (a 400 where llama.cpp would silently clamp).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias

from msgspec import UNSET, Meta, Struct, UnsetType, field

from gateway_schemas.openai import ChatCompletionRequest
from gateway_schemas.openai import CompletionRequest as OpenAICompletionRequest

NonNegative = Annotated[float, Meta(ge=0.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]

PromptPiece = str | int
LogitBias = list[list[Any]] | dict[str, float | bool]
"""`[[token id or text, bias or false], ...]` or `{"token id or text": bias}`."""


class MultimodalPrompt(Struct, kw_only=True):
    """`{"prompt_string": ..., "multimodal_data": ["base64", ...]}`: a prompt with media
    (one media marker per item in the text). Without `multimodal_data` it is a plain prompt."""

    prompt_string: str | list[PromptPiece]
    multimodal_data: list[str] | UnsetType = UNSET


SinglePrompt: TypeAlias = str | list[PromptPiece] | MultimodalPrompt
PromptForm: TypeAlias = (
    str | MultimodalPrompt | list[str | int | list[PromptPiece] | MultimodalPrompt]
)
"""A text, token ids, text and ids mixed, a multimodal object, or a list of those
(several prompts: the answer is then a list)."""


class LoraScale(Struct, kw_only=True):
    """A LoRA adapter by its id (its position in `GET /lora-adapters`) and its scale."""

    id: int
    scale: float


class NativeSampling(Struct, kw_only=True):
    """The fields every generating native route (/completion, /infill) reads."""

    n_predict: Annotated[int, Meta(ge=-1)] | None = None
    max_tokens: Annotated[int, Meta(ge=-1)] | None = None
    """OpenAI's name of `n_predict` (llama.cpp reads both)."""
    max_completion_tokens: Annotated[int, Meta(ge=-1)] | None = None
    temperature: float | None = None
    """Below 0: greedy, and `n_probs` are the plain softmax of the logits."""
    dynatemp_range: NonNegative = 0.0
    dynatemp_exponent: NonNegative = 1.0
    top_k: int = 40
    """0 or less: off."""
    top_p: Probability = 0.95
    min_p: Probability = 0.05
    top_n_sigma: float = -1.0
    """0 or less: off."""
    typical_p: Probability = 1.0
    xtc_probability: Probability = 0.0
    xtc_threshold: Probability = 0.1
    repeat_penalty: Annotated[float, Meta(gt=0.0)] = 1.0
    repeat_last_n: Annotated[int, Meta(ge=-1)] = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    dry_multiplier: NonNegative = 0.0
    dry_base: float = 1.75
    """Below 1: llama.cpp's default 1.75."""
    dry_allowed_length: Annotated[int, Meta(ge=0)] = 2
    dry_penalty_last_n: Annotated[int, Meta(ge=-1)] = -1
    """-1: the whole context."""
    dry_sequence_breakers: Annotated[list[str], Meta(min_length=1)] | None = None
    mirostat: Literal[0, 1, 2] = 0
    mirostat_tau: NonNegative = 5.0
    mirostat_eta: NonNegative = 0.1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logit_bias: LogitBias | None = None
    n_probs: Annotated[int, Meta(ge=0, le=20)] = 0
    min_keep: Annotated[int, Meta(ge=0)] = 0
    post_sampling_probs: bool = False
    samplers: list[str] | str | None = None
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    cache_prompt: bool = True
    id_slot: int = -1
    stream: bool = False
    return_tokens: bool = False
    return_progress: bool = False
    sse_ping_interval: float | None = None
    """Seconds between SSE comment pings while the stream is silent; -1 off; none: the
    `[llamacpp] sse_ping_interval` setting."""
    t_max_predict_ms: Annotated[int, Meta(ge=0)] = 0
    timings_per_token: bool = False
    response_fields: list[str] | None = None
    n_indent: Annotated[int, Meta(ge=0)] = 0
    n_keep: Annotated[int, Meta(ge=-1)] = 0
    n_discard: Annotated[int, Meta(ge=0)] = 0
    n_cache_reuse: Annotated[int, Meta(ge=0)] = 0
    n_cmpl: Annotated[int, Meta(ge=1)] | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    """OpenAI's name of `n_cmpl`."""
    lora: list[LoraScale] | None = None
    """The LoRA adapters of this request; an adapter not listed (or with scale 0) is not
    applied, so `[]` is the base model. None: the server default (`POST /lora-adapters`)."""
    verbose: bool = False
    model: str | None = None


class CompletionRequest(NativeSampling, kw_only=True):
    prompt: PromptForm


class InfillExtra(Struct, kw_only=True):
    text: str
    filename: str = "tmp"


class InfillRequest(NativeSampling, kw_only=True):
    input_prefix: str
    input_suffix: str
    input_extra: list[InfillExtra] = field(default_factory=list)
    prompt: str = ""
    """Text put after the fill-in-the-middle marker: the start of the middle."""


class TokenizeRequest(Struct, kw_only=True):
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False
    model: str | None = None


class DetokenizeRequest(Struct, kw_only=True):
    tokens: list[int]
    model: str | None = None


class ApplyTemplateRequest(ChatCompletionRequest, kw_only=True):
    """A chat completion body: only its conversation is read."""


class ChatTokenCountRequest(ChatCompletionRequest, kw_only=True):
    """`/v1/chat/completions/input_tokens`: a chat completion body to count."""


class ResponsesPart(Struct, kw_only=True):
    type: str
    text: str = ""


class ResponsesItem(Struct, kw_only=True):
    """An item of a Responses `input`: a message (the default), or a function call's output."""

    type: str = "message"
    role: str = "user"
    content: str | list[ResponsesPart] = ""
    output: str = ""
    call_id: str | None = None


class ResponsesTokenCountRequest(Struct, kw_only=True):
    """`/v1/responses/input_tokens`: a Responses API body to count."""

    input: str | list[ResponsesItem]
    instructions: str | None = None
    model: str | None = None


class BareChatRequest(ChatCompletionRequest, kw_only=True):
    """/chat/completions (no `/v1`): OpenAI's body and llama-server's extras (unset: the
    OpenAI default holds). Keep the extras the same as `BareCompletionRequest`'s."""

    mirostat: Literal[0, 1, 2] | UnsetType = UNSET
    mirostat_tau: NonNegative | UnsetType = UNSET
    mirostat_eta: NonNegative | UnsetType = UNSET
    dry_multiplier: NonNegative | UnsetType = UNSET
    dry_base: float | UnsetType = UNSET
    dry_allowed_length: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    dry_penalty_last_n: Annotated[int, Meta(ge=-1)] | UnsetType = UNSET
    dry_sequence_breakers: Annotated[list[str], Meta(min_length=1)] | UnsetType = UNSET
    xtc_probability: Probability | UnsetType = UNSET
    xtc_threshold: Probability | UnsetType = UNSET
    top_n_sigma: float | UnsetType = UNSET
    dynatemp_range: NonNegative | UnsetType = UNSET
    dynatemp_exponent: NonNegative | UnsetType = UNSET
    repeat_penalty: Annotated[float, Meta(gt=0.0)] | UnsetType = UNSET
    repeat_last_n: Annotated[int, Meta(ge=-1)] | UnsetType = UNSET
    samplers: list[str] | str | UnsetType = UNSET
    id_slot: int | UnsetType = UNSET
    cache_prompt: bool | UnsetType = UNSET
    post_sampling_probs: bool | UnsetType = UNSET
    t_max_predict_ms: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    lora: list[LoraScale] | None = None
    """As on /completion; exclusive with `adapter` / `adapters`."""
    verbose: bool = False
    """The native /completion answer of each choice in `__verbose`."""


class BareCompletionRequest(OpenAICompletionRequest, kw_only=True):
    """/completions (no `/v1`): OpenAI's body and llama-server's extras."""

    mirostat: Literal[0, 1, 2] | UnsetType = UNSET
    mirostat_tau: NonNegative | UnsetType = UNSET
    mirostat_eta: NonNegative | UnsetType = UNSET
    dry_multiplier: NonNegative | UnsetType = UNSET
    dry_base: float | UnsetType = UNSET
    dry_allowed_length: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    dry_penalty_last_n: Annotated[int, Meta(ge=-1)] | UnsetType = UNSET
    dry_sequence_breakers: Annotated[list[str], Meta(min_length=1)] | UnsetType = UNSET
    xtc_probability: Probability | UnsetType = UNSET
    xtc_threshold: Probability | UnsetType = UNSET
    top_n_sigma: float | UnsetType = UNSET
    dynatemp_range: NonNegative | UnsetType = UNSET
    dynatemp_exponent: NonNegative | UnsetType = UNSET
    repeat_penalty: Annotated[float, Meta(gt=0.0)] | UnsetType = UNSET
    repeat_last_n: Annotated[int, Meta(ge=-1)] | UnsetType = UNSET
    samplers: list[str] | str | UnsetType = UNSET
    id_slot: int | UnsetType = UNSET
    cache_prompt: bool | UnsetType = UNSET
    post_sampling_probs: bool | UnsetType = UNSET
    t_max_predict_ms: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    lora: list[LoraScale] | None = None
    """As on /completion; exclusive with `adapter` / `adapters`."""
    verbose: bool = False
    """The native /completion answer of each choice in `__verbose`."""


class EmbeddingRequest(Struct, kw_only=True):
    content: str | list[str | int | list[int]] | UnsetType = UNSET
    input: str | list[str | int | list[int]] | UnsetType = UNSET
    embd_normalize: int = 2
    model: str | None = None


class RerankRequest(Struct, kw_only=True):
    query: str
    documents: list[str] | UnsetType = UNSET
    texts: list[str] | UnsetType = UNSET
    """Another name of `documents`."""
    top_n: Annotated[int, Meta(ge=1)] | None = None
    return_text: bool = False
    model: str | None = None


class SlotActionRequest(Struct, kw_only=True):
    filename: str = ""


class PropsUpdate(Struct, kw_only=True, forbid_unknown_fields=True):
    """What `POST /props` may change: the defaults of the native routes."""

    n_predict: Annotated[int, Meta(ge=-1)] | None = None
    temperature: NonNegative | None = None
    seed: int | None = None


# ---- responses --------------------------------------------------------------------------


class TokenCount(Struct, kw_only=True):
    input_tokens: int
    object: str = "response.input_tokens"


class ErrorBody(Struct, kw_only=True, omit_defaults=True):
    code: int
    message: str
    type: str
    n_prompt_tokens: int | UnsetType = UNSET
    n_ctx: int | UnsetType = UNSET


class ErrorResponse(Struct, kw_only=True):
    error: ErrorBody
