"""Training wire types: Kiln's `/v1/train/*` and NPU-STACK's `/api/finetune/*`.

Kiln's shapes and defaults as its server reads and sends them (unknown request fields are
ignored, as Kiln ignores them), with additions marked below: the base `model` a job
trains, `cancelled` as a state of its own, and progress fields on every status. NPU-STACK's
shapes as its `finetuning` router sends them. What a request means beyond its types (an
SFT example needs an assistant turn, a group needs completions) is checked by the routes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

PositiveInt = Annotated[int, Meta(ge=1)]
Positive = Annotated[float, Meta(gt=0)]
Epochs = Annotated[int, Meta(ge=1, le=10_000)]
LoraRank = Annotated[int, Meta(ge=1, le=1024)]

TrainingState = Literal["queued", "running", "completed", "failed", "cancelled"]
FinetuneStatus = Literal["pending", "running", "stopping", "stopped", "completed", "failed"]


# ---- Kiln: requests -----------------------------------------------------------------------


class TrainingMessage(Struct, kw_only=True):
    """One chat turn of a training example."""

    role: str
    content: str


class SftExample(Struct, kw_only=True):
    messages: list[TrainingMessage]


class SftConfig(Struct, kw_only=True):
    """An SFT job's settings; every field has Kiln's default."""

    epochs: Epochs = 3
    learning_rate: Positive = 1e-4
    lora_rank: LoraRank = 16
    lora_alpha: Positive = 32.0
    base_adapter: str | None = None
    """Continue training this adapter instead of starting a new one."""
    output_name: str | None = None
    """The adapter written; default `sft-<first 8 characters of the job id>`."""
    auto_load: bool = True
    """Make the adapter the model's default when the job completes."""
    checkpoint_interval: PositiveInt | None = None
    """Every N steps also install `<output_name>-checkpoint-<step>`."""
    seed: Annotated[int, Meta(ge=0)] | None = None
    """(Addition) the seed of the job's random numbers."""
    stop_when_learned: bool = False
    """(Addition) before each step, check the example: one whose trained tokens the model
    already predicts (greedy) gets no step, and the job ends after an epoch in which every
    example was learned. With a higher `learning_rate` (1e-3), the fast way to teach one
    correction: see the trainers' README."""
    stop_loss: Annotated[float, Meta(ge=0)] | None = None
    """(Addition) the same, for examples whose loss is at most this."""
    warmup_steps: Annotated[int, Meta(ge=0)] | None = None
    """(Addition) steps of linear learning-rate warm-up (none by default)."""


class SftRequest(Struct, kw_only=True):
    examples: list[SftExample]
    config: SftConfig | None = None
    model: str | None = None
    """(Addition) the served model to train; default: the first that serves adapters."""


class GrpoCompletion(Struct, kw_only=True):
    text: str
    reward: float


class GrpoGroup(Struct, kw_only=True):
    """A prompt (`messages`) and completions of it, each with its reward."""

    messages: list[TrainingMessage]
    completions: list[GrpoCompletion]


class GrpoConfig(Struct, kw_only=True):
    """A GRPO job's settings; every field has Kiln's default."""

    learning_rate: Positive = 1e-5
    kl_coeff: Annotated[float, Meta(ge=0)] = 0.1
    clip_epsilon: Positive = 0.2
    lora_rank: LoraRank = 16
    lora_alpha: Positive = 32.0
    base_adapter: str | None = None
    output_name: str | None = None
    """The adapter written; default `grpo-<first 8 characters of the job id>`."""
    auto_load: bool = True
    checkpoint_interval: PositiveInt | None = None
    epochs: Epochs = 1
    """(Addition) passes over the groups; Kiln makes one."""
    seed: int | None = None


class GrpoRequest(Struct, kw_only=True):
    groups: list[GrpoGroup]
    config: GrpoConfig | None = None
    model: str | None = None


# ---- Kiln: responses ----------------------------------------------------------------------


class TrainingSubmitted(Struct, kw_only=True):
    job_id: str
    state: TrainingState
    message: str
    adapter_name: str
    """(Addition) the adapter the job writes."""
    model: str
    """(Addition) the model it trains."""


class LossPoint(Struct, kw_only=True):
    step: int
    loss: float
    learning_rate: float


class TrainingStatus(Struct, kw_only=True):
    """One job. `started_at` ("12s ago") and `elapsed_secs` count from its submission, as
    Kiln counts them; `elapsed_secs` stops when the job ends."""

    job_id: str
    state: TrainingState
    progress: float
    current_loss: float | None
    adapter_name: str
    started_at: str
    elapsed_secs: float
    job_type: str
    """(Addition) `sft`, `grpo`, `finetune`, ..."""
    model: str
    error: str | None
    step: int
    total_steps: int
    created_at: str
    """(Addition) submission time, ISO 8601 in UTC."""
    loss_history: list[LossPoint] | UnsetType = UNSET
    """Per-step loss and learning rate (the last 1024 steps); only on a single job."""


class QueuedJob(Struct, kw_only=True):
    job_id: str
    job_type: str
    adapter_name: str
    position: int
    """1-based, among the queued jobs of the same model."""
    model: str


class TrainingQueue(Struct, kw_only=True):
    running: TrainingStatus | None
    """The first running job (jobs of several models may run at once: `running_jobs`)."""
    queued: list[QueuedJob]
    completed: list[TrainingStatus]
    """Completed, failed and cancelled jobs, most recently submitted first."""
    running_jobs: list[TrainingStatus]
    """(Addition) every running job."""


class CancelResponse(Struct, kw_only=True):
    job_id: str
    status: Literal["cancelled"] = "cancelled"


# ---- NPU-STACK ----------------------------------------------------------------------------


class FinetuneStart(Struct, kw_only=True):
    """`POST /api/finetune/start`, as form fields or JSON. `dataset` names a file of the
    data directory's `datasets/` folder; a file uploaded with the form replaces it."""

    model_id: str
    dataset: str | None = None
    epochs: Epochs = 3
    batch_size: PositiveInt = 4
    learning_rate: Positive = 2e-4
    use_lora: bool = True
    lora_r: LoraRank = 16
    lora_alpha: Positive = 32
    text_column: str = "text"
    max_length: PositiveInt = 512
    output_name: str | None = None
    """(Addition) the adapter written; default `finetune-<first 8 characters of the id>`."""


class FinetuneConfig(Struct, kw_only=True):
    """A fine-tune job's settings under NPU-STACK's names."""

    epochs: int
    batch_size: int
    learning_rate: float
    use_lora: bool
    lora_r: int
    lora_alpha: float
    text_column: str
    max_length: int


class FinetuneStarted(Struct, kw_only=True):
    job_id: str
    status: FinetuneStatus
    model: str
    dataset: str
    config: FinetuneConfig


class FinetuneJobSummary(Struct, kw_only=True):
    id: str
    model_name: str
    dataset: str
    status: FinetuneStatus
    created_at: float
    """Epoch seconds."""
    current_step: int
    current_epoch: float
    error: str | None


class FinetuneJobs(Struct, kw_only=True):
    jobs: list[FinetuneJobSummary]


class FinetuneMetric(Struct, kw_only=True):
    step: int
    epoch: float
    loss: float
    learning_rate: float


class FinetuneJobDetail(Struct, kw_only=True):
    id: str
    model_name: str
    dataset: str
    status: FinetuneStatus
    created_at: float
    started_at: float | None
    completed_at: float | None
    current_step: int
    current_epoch: float
    total_steps: int
    config: FinetuneConfig
    metrics: list[FinetuneMetric]
    """The last 50 steps."""
    log: list[str]
    """The last 20 lines of the job's log."""
    output_dir: str | None
    """Where the adapter was written, once it was."""
    resulting_model_id: str | None
    """The adapter's name (what a chat request's `adapter` names), once completed."""
    error: str | None


class FinetuneStopped(Struct, kw_only=True):
    status: FinetuneStatus
    message: str | UnsetType = UNSET
