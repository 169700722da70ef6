"""OpenAI wire types: chat completions, completions, embeddings, models, errors.

Field names, defaults and bounds follow OpenAI's OpenAPI description. Unknown request
fields are ignored (SDKs send vendor extras); the common extras of local servers
(`top_k`, `min_p`, `typical_p`, `repetition_penalty`) are read.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType, field

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Meta(ge=1)]
ChoiceCount = Annotated[int, Meta(ge=1, le=16)]
Stop = str | list[str] | None


# ---- requests ---------------------------------------------------------------------------


class TextPart(Struct, kw_only=True, tag="text"):
    text: str


class ImageUrl(Struct, kw_only=True):
    url: str
    detail: str | None = None


class ImageUrlPart(Struct, kw_only=True, tag="image_url"):
    image_url: ImageUrl


class InputAudioPart(Struct, kw_only=True, tag="input_audio"):
    input_audio: dict[str, str]


ContentPart = TextPart | ImageUrlPart | InputAudioPart


class FunctionCallIn(Struct, kw_only=True):
    name: str
    arguments: str | dict[str, object] = "{}"
    """A JSON text as OpenAI sends it (an object is accepted too)."""


class ToolCallIn(Struct, kw_only=True):
    """A function call of an earlier assistant turn, sent back in the history."""

    id: str
    function: FunctionCallIn
    type: str = "function"


class ChatMessageIn(Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCallIn] | None = None


ToolName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FunctionDef(Struct, kw_only=True):
    name: ToolName
    description: str | None = None
    parameters: dict[str, object] | None = None
    """A JSON schema of the arguments (an object); none: the function takes no arguments."""
    strict: bool | None = None


class ToolIn(Struct, kw_only=True):
    """A tool the model may call; `function` is the only type served."""

    type: str
    function: FunctionDef | None = None


class NamedFunction(Struct, kw_only=True):
    name: str


class NamedToolChoice(Struct, kw_only=True):
    """`tool_choice` naming the one function the model must call."""

    type: str
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class StreamOptions(Struct, kw_only=True):
    include_usage: bool = False


class JsonSchemaFormat(Struct, kw_only=True):
    name: str = "response"
    schema: dict[str, object] = field(default_factory=dict)
    description: str | None = None
    strict: bool | None = None


class ResponseFormatText(Struct, kw_only=True, tag="text"):
    pass


class ResponseFormatJsonObject(Struct, kw_only=True, tag="json_object"):
    pass


class ResponseFormatJsonSchema(Struct, kw_only=True, tag="json_schema"):
    json_schema: JsonSchemaFormat


ResponseFormat = ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema


class AdapterIn(Struct, kw_only=True):
    """Kiln's per-request LoRA composition: an adapter and its scale."""

    name: str
    scale: float = 1.0


class SamplingExtras(Struct, kw_only=True):
    """Sampling fields shared by chat and text completions."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: ChoiceCount = 1
    stop: Stop = None
    seed: int | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extras understood by local servers (vLLM, llama.cpp):
    top_k: Annotated[int, Meta(ge=-1)] | None = None
    min_p: TopP | None = None
    typical_p: TopP | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0)] | None = None
    ignore_eos: bool = False
    # Structured output: OpenAI's response_format, and llama.cpp's grammar / json_schema.
    response_format: ResponseFormat | None = None
    grammar: str | None = None
    json_schema: dict[str, object] | None = None
    timings_per_token: bool = False
    """llama.cpp's extension: every streamed chunk carries the timings so far."""
    adapter: str | UnsetType | None = UNSET
    """Kiln's extension: the LoRA adapter to serve this request with; `null`: the base model;
    absent (and no `adapters`): the server default."""
    adapters: list[AdapterIn] | None = None
    """Kiln's extension: LoRA adapters composed for this request (their scaled deltas summed);
    exclusive with `adapter`."""


class ChatCompletionRequest(SamplingExtras, kw_only=True):
    model: str | None = None
    """Optional, as llama-server and Kiln allow: without it the default chat model serves."""
    messages: Annotated[list[ChatMessageIn], Meta(min_length=1)]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoice | None = None
    """Default: `auto` when tools are given, `none` otherwise."""
    parallel_tool_calls: bool = True
    """False: at most one tool call per answer."""


class CompletionRequest(SamplingExtras, kw_only=True):
    model: str | None = None
    prompt: str | list[str | int | list[int]]
    """Text, token ids, or a batch of either (msgspec allows one list type per union)."""
    max_tokens: Annotated[int, Meta(ge=0)] | None = 16
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: ChoiceCount | None = None


class EmbeddingRequest(Struct, kw_only=True):
    model: str | None = None
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | None = None


# ---- responses --------------------------------------------------------------------------


class TopLogprobOut(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(Struct, kw_only=True):
    content: list[TokenLogprobOut] | None
    refusal: None = None


class PromptTokensDetails(Struct, kw_only=True):
    cached_tokens: int = 0


class UsageOut(Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class TimingsOut(Struct, kw_only=True):
    """llama.cpp's `timings` extension: how long the prompt and the output took."""

    cache_n: int
    prompt_n: int
    prompt_ms: float
    prompt_per_token_ms: float
    prompt_per_second: float
    predicted_n: int
    predicted_ms: float
    predicted_per_token_ms: float
    predicted_per_second: float


class FunctionCallOut(Struct, kw_only=True):
    name: str
    arguments: str
    """The arguments as a JSON text."""


class ToolCallOut(Struct, kw_only=True):
    id: str
    function: FunctionCallOut
    type: Literal["function"] = "function"


class AssistantMessage(Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: None = None
    tool_calls: list[ToolCallOut] | UnsetType = UNSET


class ChatChoice(Struct, kw_only=True):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(Struct, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None
    timings: TimingsOut | UnsetType = UNSET
    adapters: list[AdapterIn] | UnsetType = UNSET
    """The gateway's extension: the LoRA adapters that served this response."""


class FunctionDelta(Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Struct, kw_only=True, omit_defaults=True):
    """A streamed piece of tool call `index`: its id, type and name come first, then the
    arguments text in pieces (clients concatenate them)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class Delta(Struct, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(Struct, kw_only=True):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(Struct, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[ChatChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: UsageOut | None = None
    system_fingerprint: str | None = None
    timings: TimingsOut | UnsetType = UNSET
    adapters: list[AdapterIn] | UnsetType = UNSET
    """The gateway's extension: the LoRA adapters that served this response."""


class CompletionLogprobs(Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(Struct, kw_only=True):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(Struct, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    object: Literal["text_completion"] = "text_completion"
    usage: UsageOut | None = None
    system_fingerprint: str | None = None
    timings: TimingsOut | UnsetType = UNSET
    adapters: list[AdapterIn] | UnsetType = UNSET
    """The gateway's extension: the LoRA adapters that served this response."""


class EmbeddingData(Struct, kw_only=True):
    index: int
    embedding: list[float] | str
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(Struct, kw_only=True):
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
    object: Literal["list"] = "list"


class ModelCard(Struct, kw_only=True):
    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"
    status: dict[str, Any] = field(default_factory=dict)
    """The gateway's extra, in llama-server's router shape: `{"value": "loaded"}`
    (`unloaded`, `loading`, `unloading`; `failed: true` after a failed load)."""


class ModelList(Struct, kw_only=True):
    data: list[ModelCard] = field(default_factory=list)
    object: Literal["list"] = "list"


class ErrorBody(Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(Struct, kw_only=True):
    error: ErrorBody
