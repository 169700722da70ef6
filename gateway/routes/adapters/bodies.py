"""Kiln's wire types for `/v1/adapters/*` and `POST /v1/completions/batch`.

Shapes as Kiln's server sends and reads them (unknown request fields are ignored, as Kiln
ignores them), with a few additions marked below: the model a request manages (`model`),
the server default as a list (`default`), and the adapters that served a batch (`adapters`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from gateway_schemas.openai import (
    AdapterIn,
    ChatMessageIn,
    PositiveInt,
    Stop,
    Temperature,
    TopP,
    UsageOut,
)
from msgspec import UNSET, Meta, Struct, UnsetType

MergeMode = Literal["weighted_average", "ties", "concat"]


# ---- adapters -----------------------------------------------------------------------------


class AdapterInfo(Struct, kw_only=True):
    """One stored adapter, as `GET /v1/adapters` lists it."""

    name: str
    has_config: bool
    has_weights: bool
    size_bytes: int
    modified_at: str | None
    files: list[str]


class AdapterList(Struct, kw_only=True):
    active: str | None
    """The server default's name: the adapter's name when the default is one adapter,
    the names joined by `+` for a composition (`a+b`), null for the base model."""
    available: list[AdapterInfo]
    default: list[AdapterIn]
    """(Addition) the server default exactly: each adapter with its scale; empty: the base model."""
    model: str
    """(Addition) the model whose adapters these are."""


class LoadRequest(Struct, kw_only=True):
    """One adapter by `name` (and `scale`), or a composition in `adapters`: the adapters a
    request that names none is served with from now on."""

    name: str | None = None
    scale: float = 1.0
    adapters: list[AdapterIn] | None = None
    model: str | None = None


class LoadResponse(Struct, kw_only=True):
    status: Literal["loaded"] = "loaded"
    name: str
    """As `active` in `GET /v1/adapters`."""
    adapters: list[AdapterIn]
    model: str


class UnloadRequest(Struct, kw_only=True):
    model: str | None = None


class UnloadResponse(Struct, kw_only=True):
    status: Literal["unloaded"] = "unloaded"
    model: str


class DeleteResponse(Struct, kw_only=True):
    status: Literal["deleted"] = "deleted"
    name: str


class UploadResponse(Struct, kw_only=True):
    name: str
    size_bytes: int
    files: int
    """How many files the adapter has (a count, as Kiln sends it)."""


class MergeSource(Struct, kw_only=True):
    name: str
    weight: float = 1.0


class MergeRequest(Struct, kw_only=True):
    sources: list[MergeSource]
    output_name: str
    mode: MergeMode = "weighted_average"
    density: float | None = None
    """The fraction of each matrix TIES keeps, in (0, 1]; only with mode `ties` (default 0.2)."""
    model: str | None = None


class MergeResponse(Struct, kw_only=True):
    status: Literal["merged"] = "merged"
    output_name: str
    mode: MergeMode
    sources: list[MergeSource]
    num_tensors: int


# ---- batch --------------------------------------------------------------------------------


class BatchRequest(Struct, kw_only=True):
    """Several prompts, each completed `n` times, with one set of sampling settings and one
    adapter set for the whole batch. A prompt is a messages array, or a string (one user
    message)."""

    prompts: Annotated[
        list[Annotated[list[ChatMessageIn], Meta(min_length=1)] | str], Meta(min_length=1)
    ]
    n: PositiveInt = 1
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: Annotated[int, Meta(ge=0)] = 0
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    """An alias of `max_tokens`, which wins when both are given. Neither: 2048, as Kiln."""
    stop: Stop = None
    seed: int | None = None
    """Output j of prompt i gets seed `seed + i * n + j`."""
    model: str | None = None
    adapter: str | UnsetType | None = UNSET
    adapters: list[AdapterIn] | None = None


class BatchCompletionUsage(Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class BatchCompletion(Struct, kw_only=True):
    prompt_index: int
    completion_index: int
    text: str
    finish_reason: str | None
    usage: BatchCompletionUsage


class BatchResponse(Struct, kw_only=True):
    id: str
    object: Literal["batch.completion"] = "batch.completion"
    created: int
    model: str
    completions: list[BatchCompletion]
    usage: UsageOut
    """Each prompt's tokens counted once, every completion's tokens counted."""
    adapters: list[AdapterIn] | UnsetType = UNSET
    """(Addition) the adapters that served the batch, as on chat completions."""
