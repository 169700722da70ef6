"""Distillation wire types: OpenTracy's `/v1/distillation*`.

OpenTracy's fields, defaults and ranges (its `DistillationConfig`), with its leniency: unknown
fields are ignored and a `null` means the default. Additions are marked: where prompts come
from besides `prompts` and `dataset_id` (the gateway's own recorded traffic), the judge, the
curation threshold, the held-out share, and the student's training knobs. OpenTracy's
default quantization types include `q4_k_m`, which only a `llama-quantize` binary writes;
here the default is `["q8_0"]`, which the gateway writes itself.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

DistillationStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
Phase = Literal["initializing", "data_generation", "curation", "training", "export", "completed"]


class ChatTurn(Struct, kw_only=True):
    role: str
    content: str


class PromptItem(Struct, kw_only=True):
    """(Addition) an inline prompt as a conversation to answer, instead of a plain string."""

    messages: list[ChatTurn]


class RecordedSelection(Struct, kw_only=True, forbid_unknown_fields=True):
    """(Addition) prompts from the gateway's recorded traffic (`[recording]`): those served
    by `model` (any when None) between `since` and `until` (Unix seconds; open when None)."""

    model: str | None = None
    since: float | None = None
    until: float | None = None


class DistillationConfig(Struct, kw_only=True):
    teacher_model: str = "openai/gpt-4o"
    """A served model, usually a teacher proxy's provider-prefixed id."""
    student_model: str | None = None
    """The served model to train (it must take LoRA adapters); default: the first such."""
    base_model: str | None = None
    """OpenTracy's other name for `student_model`."""
    num_prompts: Annotated[int, Meta(ge=10, le=100_000)] = 1000
    """At most this many prompts are used."""
    n_samples: Annotated[int, Meta(ge=2, le=16)] = 4
    training_steps: Annotated[int, Meta(ge=10, le=10_000)] = 500
    bond_beta: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.5
    bond_gamma: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.1
    temperature: Annotated[float, Meta(ge=0.1, le=2.0)] = 0.8
    export_gguf: bool = True
    quantization_types: list[str] = field(default_factory=lambda: ["q8_0"])
    quantization: str | None = None
    """OpenTracy's single-type form: the same as `quantization_types: [quantization]`."""
    dataset_id: str | None = None
    """A prompt file inside the data directory's `datasets/` folder (`.jsonl`, `.json`,
    `.csv`; rows with `prompt`, `messages` or `text`)."""
    prompts: list[str | PromptItem] | None = None
    recorded: RecordedSelection | None = None
    """(Addition) prompts from recorded traffic. When no source is given at all, recorded
    traffic is used if `[recording]` is on (OpenTracy falls back to its traces likewise)."""
    judge_model: str | None = None
    """(Addition) the model that scores candidates; default: the teacher."""
    reward: str | None = None
    """(Addition) a registered reward plugin that scores candidates instead of a judge."""
    min_score: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    """(Addition) curation drops a prompt whose best candidate scores below this."""
    held_out: Annotated[float, Meta(ge=0.0, le=0.5)] = 0.1
    """(Addition) the share of prompts kept out of training to measure the student before
    and after (at least one when there are two prompts or more)."""
    max_tokens: Annotated[int, Meta(ge=1, le=32_768)] | None = None
    """(Addition) the longest teacher sample; default `[distillation] sample_max_tokens`."""
    learning_rate: Annotated[float, Meta(gt=0.0)] = 2e-4
    lora_rank: Annotated[int, Meta(ge=1, le=1024)] = 16
    lora_alpha: Annotated[float, Meta(gt=0.0)] = 16.0
    batch_size: Annotated[int, Meta(ge=1, le=64)] = 1
    seed: Annotated[int, Meta(ge=0)] | None = None
    output_name: str | None = None
    """The adapter written (OpenTracy declares it and ignores it); default
    `distill-<first 8 characters of the job id>`."""
    auto_load: bool = False
    """(Addition) make the adapter the student's server default when the job completes.
    Off by default: the adapter serves at once when a request names it, and the student's
    other traffic is not changed behind its users' backs."""


class DistillationRequest(Struct, kw_only=True):
    tenant_id: Annotated[str, Meta(min_length=1)] = "default"
    """Whose job it is (reads name it with `?tenant_id=`); null or absent: `default`."""
    name: str = ""
    description: str = ""
    config: DistillationConfig = field(default_factory=DistillationConfig)


class PhaseEntry(Struct, kw_only=True):
    name: str
    started_at: str


class DistillationJob(Struct, kw_only=True):
    """A job as `GET /v1/distillation/{id}` sends it (OpenTracy's `serialize_job`)."""

    id: str
    name: str
    description: str
    tenant_id: str
    status: DistillationStatus
    phase: Phase
    config: dict[str, Any]
    progress: dict[str, Any]
    results: dict[str, Any]
    artifacts: dict[str, Any]
    error: str | None
    cost_accrued: float
    created_at: str
    updated_at: str
    started_at: str | None
    completed_at: str | None
    phases: list[PhaseEntry] = []
    """The phases the job entered, in order (ours, beside OpenTracy's fields)."""


class DistillationList(Struct, kw_only=True):
    jobs: list[DistillationJob]
    total: int
    has_more: bool


class Artifacts(Struct, kw_only=True):
    """Paths on the gateway's host, inside its data directory."""

    adapter_path: str | None
    gguf_paths: dict[str, str]
    tokenizer_path: str | None
    config_path: str | None
    adapter_name: str | None = None
    """(Addition) the adapter's name in the student's adapter store (servable at once)."""
    merged_path: str | None = None
    """(Addition) the merged student as a safetensors folder."""
    files: dict[str, str] = field(default_factory=dict)
    """(Addition) the job's other files: teacher samples, curated data, eval table."""


class Estimate(Struct, kw_only=True):
    """`POST /v1/distillation/estimate`: what a job would cost at most, before spending."""

    estimated_cost: float
    currency: str
    breakdown: dict[str, float]
    tokens: dict[str, int]
    prompts: int
    priced: bool
    """False when the teacher or judge has no price (a local model): its calls count 0."""
    tenant_id: str
    budget: float | None
    spent: float
    balance: float | None
    sufficient: bool


class DistillationLogs(Struct, kw_only=True):
    logs: list[str]


class ErrorBody(Struct, kw_only=True):
    code: str
    message: str
    param: str | None = None


class DistillationError(Struct, kw_only=True):
    error: ErrorBody
