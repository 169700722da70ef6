"""KoboldCpp / KoboldAI United wire types (koboldcpp-openapi.json's GenerationInput and
friends).

Defaults are KoboldCpp's own (koboldcpp.py, `generate()`), and so are the field kinds:
KoboldCpp reads every body field by field, fills what is missing with its default and
clamps out-of-range values later instead of refusing them, so these Structs carry no range
constraints (the Kobold routes read bodies with `gateway.routes.kobold.body.read_body`,
which coerces numbers as KoboldCpp does, and clamp in their translation). Unknown fields
are ignored, as KoboldCpp ignores them: `model` is one.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import UNSET, Struct, UnsetType, field

from gateway_schemas.openai import AdapterIn

DEFAULT_SAMPLER_ORDER = [6, 0, 1, 3, 4, 2, 5]


class GenerationInput(Struct, kw_only=True):
    """`/api/v1/generate` and `/api/extra/generate/stream`.

    Aliases KoboldCpp also reads: `repeat_penalty` / `repetition_penalty` (the largest of
    the three penalties wins), `ban_eos_token` (wins over `use_default_badwordsids`),
    `banned_strings` (SillyTavern's name for `banned_tokens`), `custom_token_bans` (token
    ids, comma-separated, banned through the logit bias). `dry_sequence_breakers` may be a
    JSON-encoded list, as SillyTavern sends it. `images` are ignored by a model that cannot
    see, as KoboldCpp ignores them without a vision projector.

    The gateway's extensions `adapter` and `adapters` choose LoRA adapters as on the OpenAI
    routes (KoboldCpp has no per-request adapters).
    """

    prompt: str = ""
    memory: str = ""
    max_context_length: int | None = None
    max_length: int | None = None
    rep_pen: float = 1.0
    repeat_penalty: float = 1.0
    repetition_penalty: float = 1.0
    rep_pen_range: int = 320
    rep_pen_slope: float = 1.0
    presence_penalty: float = 0.0
    sampler_order: list[int] = field(default_factory=lambda: list(DEFAULT_SAMPLER_ORDER))
    sampler_seed: int = -1
    stop_sequence: list[str] = field(default_factory=list)
    trim_stop: bool = True
    temperature: float = 0.75
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    smoothing_factor: float = 0.0
    tfs: float = 1.0
    top_a: float = 0.0
    top_k: int = 100
    top_p: float = 0.92
    min_p: float = 0.0
    typical: float = 1.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 320
    dry_sequence_breakers: list[str] | str = field(default_factory=list)
    xtc_threshold: float = 0.2
    xtc_probability: float = 0.0
    nsigma: float = 0.0
    use_default_badwordsids: bool = False
    ban_eos_token: bool | None = None
    bypass_eos: bool = False
    banned_tokens: list[str] | None = None
    banned_strings: list[str] = field(default_factory=list)
    custom_token_bans: str = ""
    logit_bias: dict[str, Any] = field(default_factory=dict)
    grammar: str = ""
    grammar_retain_state: bool = False
    genkey: str = ""
    logprobs: bool = False
    images: list[str] = field(default_factory=list)
    render_special: bool = False
    replace_instruct_placeholders: bool = False
    adapter: str | UnsetType | None = UNSET
    """The LoRA adapter to generate with; `null`: the base model; absent (and no `adapters`):
    the server default."""
    adapters: list[AdapterIn] | None = None
    """LoRA adapters composed for this request (`[{"name", "scale"}]`, their scaled deltas
    summed); exclusive with `adapter`."""


class GenKey(Struct, kw_only=True):
    genkey: str = ""


class TokenCountRequest(Struct, kw_only=True):
    prompt: str = ""
    special: bool = True
    """Add the model's special tokens (BOS) as a prompt gets them."""


class DetokenizeRequest(Struct, kw_only=True):
    ids: list[int] = field(default_factory=list)


class JsonToGrammarRequest(Struct, kw_only=True):
    schema: dict[str, Any] | None = None
    """The JSON schema; KoboldCpp takes the whole body as the schema when this is missing
    or empty."""


class KoboldEmbeddingRequest(Struct, kw_only=True):
    """`/api/extra/embeddings`: OpenAI's shape; `model` is ignored, the first embedding
    model answers. An empty `input` embeds nothing. Inputs longer than the model reads are
    always truncated (`truncate` is accepted for KoboldCpp's sake)."""

    input: str | list[str] = ""
    truncate: bool = True
    encoding_format: Literal["float", "base64"] = "float"


class DataSaveRequest(Struct, kw_only=True):
    slot: int = -1
    title: str = ""
    format: str = ""
    data: str = ""
    """The story; empty erases the slot."""


class DataLoadRequest(Struct, kw_only=True):
    slot: int = 0


class MultiplayerStatusRequest(Struct, kw_only=True):
    sender: str = ""
    senderbusy: bool = False


class SetStoryRequest(Struct, kw_only=True):
    data: str = ""
    full_update: bool = False
    sender: str = ""
    data_format: str = ""


class StateRequest(Struct, kw_only=True):
    slot: int = 0


class ReloadConfigRequest(Struct, kw_only=True):
    filename: str = ""
    overrideconfig: str = ""


class BasicError(Struct, kw_only=True):
    msg: str
    type: str


class ErrorResponse(Struct, kw_only=True):
    detail: BasicError
