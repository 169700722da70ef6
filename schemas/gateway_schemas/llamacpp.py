"""llama.cpp server wire types: /completion, /tokenize, /detokenize, /apply-template,
/infill, /embedding, /rerank, /props, /slots, and its error shape.

Field names and defaults follow llama.cpp's server (tools/server/README.md): sampling
defaults are llama.cpp's own (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05).
Unknown fields are ignored, as llama.cpp does.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import UNSET, Meta, Struct, UnsetType, field

NonNegative = Annotated[float, Meta(ge=0.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]

PromptPiece = str | int
LogitBias = list[list[Any]] | dict[str, float | bool]
"""`[[token id or text, bias or false], ...]` or `{"token id or text": bias}`."""


class NativeSampling(Struct, kw_only=True):
    """The sampling fields every generating native route reads."""

    n_predict: Annotated[int, Meta(ge=-1)] | None = None
    temperature: NonNegative | None = None
    top_k: Annotated[int, Meta(ge=0)] = 40
    top_p: Probability = 0.95
    min_p: Probability = 0.05
    typical_p: Probability = 1.0
    repeat_penalty: Annotated[float, Meta(gt=0.0)] = 1.0
    repeat_last_n: Annotated[int, Meta(ge=-1)] = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logit_bias: LogitBias | None = None
    n_probs: Annotated[int, Meta(ge=0, le=20)] = 0
    post_sampling_probs: bool = False
    samplers: list[str] | str | None = None
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    cache_prompt: bool = True
    id_slot: int = -1
    stream: bool = False
    return_tokens: bool = False
    t_max_predict_ms: Annotated[int, Meta(ge=0)] = 0
    timings_per_token: bool = False
    response_fields: list[str] | None = None
    model: str | None = None


class CompletionRequest(NativeSampling, kw_only=True):
    prompt: str | list[PromptPiece]


class InfillExtra(Struct, kw_only=True):
    filename: str = ""
    text: str = ""


class InfillRequest(NativeSampling, kw_only=True):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[InfillExtra] = field(default_factory=list)
    prompt: str = ""


class TokenizeRequest(Struct, kw_only=True):
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False
    model: str | None = None


class DetokenizeRequest(Struct, kw_only=True):
    tokens: list[int]
    model: str | None = None


class TemplateMessage(Struct, kw_only=True):
    role: str
    content: str | None = None


class ApplyTemplateRequest(Struct, kw_only=True):
    messages: Annotated[list[TemplateMessage], Meta(min_length=1)]
    model: str | None = None


class EmbeddingRequest(Struct, kw_only=True):
    content: str | list[str] | UnsetType = UNSET
    input: str | list[str] | UnsetType = UNSET
    embd_normalize: int = 2
    model: str | None = None


class RerankRequest(Struct, kw_only=True):
    query: str
    documents: Annotated[list[str], Meta(min_length=1)]
    top_n: Annotated[int, Meta(ge=1)] | None = None
    model: str | None = None


class SlotActionRequest(Struct, kw_only=True):
    filename: str = ""


class PropsUpdate(Struct, kw_only=True, forbid_unknown_fields=True):
    """What `POST /props` may change: the defaults of the native routes."""

    n_predict: Annotated[int, Meta(ge=-1)] | None = None
    temperature: NonNegative | None = None
    seed: int | None = None


# ---- responses --------------------------------------------------------------------------


class ErrorBody(Struct, kw_only=True, omit_defaults=True):
    code: int
    message: str
    type: str
    n_prompt_tokens: int | UnsetType = UNSET
    n_ctx: int | UnsetType = UNSET


class ErrorResponse(Struct, kw_only=True):
    error: ErrorBody
