"""KoboldCpp / KoboldAI United wire types (koboldcpp-openapi.json's GenerationInput and
friends). Defaults follow KoboldCpp's; unknown fields are ignored, as KoboldCpp does."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

NonNegative = Annotated[float, Meta(ge=0.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]

DEFAULT_SAMPLER_ORDER = [6, 0, 1, 3, 4, 2, 5]


class GenerationInput(Struct, kw_only=True):
    prompt: str
    memory: str = ""
    max_context_length: Annotated[int, Meta(ge=1)] | None = None
    max_length: Annotated[int, Meta(ge=1)] | None = None
    rep_pen: Annotated[float, Meta(ge=1.0)] = 1.0
    rep_pen_range: Annotated[int, Meta(ge=0)] = 320
    rep_pen_slope: NonNegative = 0.0
    sampler_order: list[int] = field(default_factory=lambda: list(DEFAULT_SAMPLER_ORDER))
    sampler_seed: Annotated[int, Meta(ge=-1, le=999999)] = -1
    stop_sequence: list[str] = field(default_factory=list)
    trim_stop: bool = True
    temperature: NonNegative = 0.75
    dynatemp_range: Annotated[float, Meta(ge=-5.0, le=5.0)] = 0.0
    dynatemp_exponent: NonNegative = 1.0
    smoothing_factor: NonNegative = 0.0
    tfs: Probability = 1.0
    top_a: NonNegative = 0.0
    top_k: Annotated[int, Meta(ge=0)] = 100
    top_p: Probability = 0.92
    min_p: Probability = 0.0
    typical: Probability = 1.0
    mirostat: Literal[0, 1, 2] = 0
    mirostat_tau: NonNegative = 5.0
    mirostat_eta: NonNegative = 0.1
    dry_multiplier: NonNegative = 0.0
    dry_base: Annotated[float, Meta(ge=1.0)] = 1.75
    dry_allowed_length: Annotated[int, Meta(ge=0)] = 2
    dry_penalty_last_n: Annotated[int, Meta(ge=0)] = 0
    dry_sequence_breakers: list[str] = field(default_factory=lambda: ["\n", ":", '"', "*"])
    xtc_threshold: Probability = 0.2
    xtc_probability: Probability = 0.0
    nsigma: NonNegative = 0.0
    use_default_badwordsids: bool = False
    bypass_eos: bool = False
    banned_tokens: list[str] = field(default_factory=list)
    logit_bias: dict[str, float] = field(default_factory=dict)
    grammar: str = ""
    genkey: str = ""
    logprobs: bool = False
    images: list[str] = field(default_factory=list)
    render_special: bool = False
    replace_instruct_placeholders: bool = False
    model: str | None = None


class GenKey(Struct, kw_only=True):
    genkey: str = ""


class TokenCountRequest(Struct, kw_only=True):
    prompt: str


class DetokenizeRequest(Struct, kw_only=True):
    ids: list[int]


class JsonToGrammarRequest(Struct, kw_only=True):
    schema: dict[str, Any]


class DataSaveRequest(Struct, kw_only=True):
    slot: int | str
    title: str = ""
    format: str = ""
    data: str = ""


class DataLoadRequest(Struct, kw_only=True):
    slot: int | str


class MultiplayerStatusRequest(Struct, kw_only=True):
    sender: str = ""
    senderbusy: bool = False


class SetStoryRequest(Struct, kw_only=True):
    data: str
    full_update: bool = True
    sender: str = ""
    data_format: str = ""


class StateRequest(Struct, kw_only=True):
    slot: Annotated[int, Meta(ge=0, le=2)] = 0


class ReloadConfigRequest(Struct, kw_only=True):
    filename: str
    overrideconfig: str = ""


class BasicError(Struct, kw_only=True):
    msg: str
    type: str


class ErrorResponse(Struct, kw_only=True):
    detail: BasicError
