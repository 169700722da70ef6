"""The canonical generation contract.

Every dialect (OpenAI, llama.cpp-native, Kobold, ...) translates its request into a
`GenerationRequest` and renders the stream of `GenerationChunk` it gets back. Every backend
consumes and produces only these types. N dialects + M backends = N + M adapters.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field

FinishReason = Literal["stop", "length", "abort", "error"]

NonNegativeFloat = Annotated[float, Meta(ge=0.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]


SamplerName = Literal[
    "penalties",
    "dry",
    "top_n_sigma",
    "top_k",
    "top_a",
    "tfs",
    "typical_p",
    "top_p",
    "min_p",
    "xtc",
    "temperature",
]
DEFAULT_DRY_BREAKERS = ["\n", ":", '"', "*"]


class ToolCall(Struct, kw_only=True):
    """A function call an assistant turn made: the call's id, the function's name and the
    arguments as the JSON text of an object."""

    id: str
    name: str
    arguments: str = "{}"


class ToolDefinition(Struct, kw_only=True, omit_defaults=True):
    """A function the model may call: its name, what it does, and a JSON schema (an object
    schema) of its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, object] = field(default_factory=lambda: {"type": "object"})


class ChatMessage(Struct, kw_only=True, omit_defaults=True):
    """One message of a conversation, its content already flattened to text."""

    role: str
    content: str = ""
    name: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    """The function calls of an assistant turn (its content may then be empty)."""
    tool_call_id: str | None = None
    """On a `tool` message: the id of the call whose result `content` is."""


class SamplingParams(Struct, kw_only=True, omit_defaults=True):
    """How the next token is chosen. The defaults leave the model's distribution untouched.

    `temperature == 0` means greedy decoding. Penalties apply to the last
    `penalty_last_n` tokens (prompt and output; -1 means the whole context).
    """

    temperature: NonNegativeFloat = 1.0
    top_k: Annotated[int, Meta(ge=0)] = 0
    top_p: Probability = 1.0
    min_p: Probability = 0.0
    typical_p: Probability = 1.0
    repeat_penalty: Annotated[float, Meta(gt=0.0)] = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: Annotated[int, Meta(ge=-1)] = 64
    repeat_penalty_slope: NonNegativeFloat = 0.0
    """KoboldAI's slope: 0 applies `repeat_penalty` evenly over the window; above 0 the
    penalty ramps from none (oldest) to full (newest) along KoboldAI's curve."""
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    order: list[SamplerName] = field(default_factory=list)
    """The samplers in the order to apply them; empty: the default chain (penalties,
    dry, top_n_sigma, top_k, top_a, tfs, typical_p, top_p, min_p, xtc, temperature).
    A sampler left out of a given order is not applied."""
    # The extended set (KoboldCpp's; each off at its default):
    top_a: NonNegativeFloat = 0.0
    tfs: Probability = 1.0
    top_n_sigma: NonNegativeFloat = 0.0
    xtc_threshold: Probability = 0.1
    xtc_probability: Probability = 0.0
    dry_multiplier: NonNegativeFloat = 0.0
    dry_base: Annotated[float, Meta(ge=1.0)] = 1.75
    dry_allowed_length: Annotated[int, Meta(ge=0)] = 2
    dry_penalty_last_n: Annotated[int, Meta(ge=-1)] = -1
    dry_sequence_breakers: list[str] = field(default_factory=lambda: list(DEFAULT_DRY_BREAKERS))
    dynatemp_range: NonNegativeFloat = 0.0
    dynatemp_exponent: NonNegativeFloat = 1.0
    smoothing_factor: NonNegativeFloat = 0.0
    mirostat: Literal[0, 1, 2] = 0
    mirostat_tau: NonNegativeFloat = 5.0
    mirostat_eta: NonNegativeFloat = 0.1
    banned_sequences: list[list[int]] = field(default_factory=list)
    """Token sequences never generated (Kobold's `banned_tokens`, tokenized)."""


class GrammarConstraint(Struct, kw_only=True, tag="grammar"):
    """Output must match a GBNF grammar."""

    grammar: str


class JsonSchemaConstraint(Struct, kw_only=True, tag="json_schema"):
    """Output must be JSON valid against `schema` (an empty schema: any JSON object)."""

    schema: dict[str, object] = field(default_factory=dict)


Constraint = GrammarConstraint | JsonSchemaConstraint


class AdapterRef(Struct, kw_only=True, omit_defaults=True):
    """A LoRA adapter applied to one request, with its scale."""

    name: str
    scale: float = 1.0


class GenerationRequest(Struct, kw_only=True, omit_defaults=True):
    """One sequence to generate. Exactly one of `messages` and `prompt` is set.

    `prompt` is either text or a list of token ids. `max_tokens=None` lets the backend
    generate until the end of the context. `top_logprobs` > 0 asks for that many
    alternatives per token and implies `logprobs`.
    """

    id: str
    model: str
    messages: list[ChatMessage] | None = None
    prompt: str | list[int] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] = 0
    constraint: Constraint | None = None
    adapters: list[AdapterRef] | None = None
    """LoRA adapters (their deltas scaled and summed). None: the server default for the
    model; an empty list: the base model. The host resolves None before a backend sees it."""
    cache_prompt: bool = True
    slot: int | None = None
    """The backend's parallel slot to run in (llama.cpp's `id_slot`); None: any."""
    time_limit: Annotated[float, Meta(gt=0.0)] | None = None
    """Seconds the generation may take after the prompt; then it ends as `length`."""
    post_sampling_probs: bool = False
    """Logprobs from the distribution actually sampled (after filters and temperature)."""
    tools: list[ToolDefinition] = field(default_factory=list)
    """Functions the model may call, shown to it in the chat prompt (with `messages` only):
    the backend's `render_chat(messages, tools=...)` writes them."""
    tenant: str | None = None
    """Who the generation is for (the API key's name, or a distillation job's tenant):
    tokens and cost are counted per tenant. None: anonymous."""


class TopLogprob(Struct, kw_only=True):
    token: str
    token_id: int
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(Struct, kw_only=True):
    """The chosen token's log-probability and its most likely alternatives."""

    token: str
    token_id: int
    logprob: float
    bytes: list[int] | None = None
    top: list[TopLogprob] = field(default_factory=list)


class Usage(Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cost: float | None = None
    """What the generation cost in US dollars, when the backend knows a price (a teacher
    proxy's price table); None for local models."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timings(Struct, kw_only=True):
    """llama.cpp-style timings of one sequence, in milliseconds."""

    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    cache_n: int = 0

    @property
    def prompt_per_second(self) -> float:
        return self.prompt_n / self.prompt_ms * 1000.0 if self.prompt_ms > 0 else 0.0

    @property
    def predicted_per_second(self) -> float:
        return self.predicted_n / self.predicted_ms * 1000.0 if self.predicted_ms > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "cache_n": self.cache_n,
            "prompt_n": self.prompt_n,
            "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": self.prompt_ms / self.prompt_n if self.prompt_n else 0.0,
            "prompt_per_second": self.prompt_per_second,
            "predicted_n": self.predicted_n,
            "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": self.predicted_ms / self.predicted_n
            if self.predicted_n
            else 0.0,
            "predicted_per_second": self.predicted_per_second,
        }


class GenerationChunk(Struct, kw_only=True, omit_defaults=True):
    """A piece of a generation stream.

    The last chunk of every stream has `finish_reason` set and carries `usage` and
    `timings`; earlier chunks carry text and the ids (and logprobs) of the tokens behind it.
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_word: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    slot: int | None = None
    """On the last chunk: the backend's slot that held the sequence (its prompt cache)."""


class EmbeddingResult(Struct, kw_only=True):
    """One vector per input, in input order, and the number of tokens read."""

    vectors: list[list[float]]
    prompt_tokens: int


def to_builtins(value: object) -> object:
    """Plain Python data of a Struct (for logs and hooks)."""
    return msgspec.to_builtins(value)
