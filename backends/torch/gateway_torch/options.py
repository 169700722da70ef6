"""Parsing of a model's `options` table into typed runtime settings.

Options (all optional): `device` ("auto": cuda when available, else cpu), `dtype`
("auto": bfloat16 on CUDA, float32 elsewhere), `slots` (sequences decoded in parallel,
default 8), `context_length` (tokens per slot; default: the model's
`max_position_embeddings`, capped at 4096), `prefill_chunk` (prompt tokens computed per
step, default 256), `threads` (torch intra-op threads), `max_adapters` (LoRA adapters kept
resident, least recently used evicted beyond it, default 16).
Torch is imported lazily: call these functions only from `load()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_CONTEXT = 4096
DEFAULT_SLOTS = 8
DEFAULT_PREFILL_CHUNK = 256
DEFAULT_MAX_ADAPTERS = 16

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how a model runs."""

    device: torch.device
    dtype: torch.dtype
    context_length: int | None
    threads: int | None
    slots: int = DEFAULT_SLOTS
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    max_adapters: int = DEFAULT_MAX_ADAPTERS


def parse_options(options: dict[str, Any], extra: frozenset[str] = frozenset()) -> RuntimeOptions:
    """Validate `options` and resolve "auto" values against the machine.

    `extra` names further keys the caller reads itself.
    """
    import torch

    known = {
        "device",
        "dtype",
        "context_length",
        "threads",
        "slots",
        "prefill_chunk",
        "max_adapters",
    } | extra
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"Unknown torch backend option(s): {', '.join(unknown)}.")
    device = resolve_device(str(options.get("device", "auto")))
    dtype = _dtype(str(options.get("dtype", "auto")), device)
    context = positive_int(options, "context_length")
    threads = positive_int(options, "threads")
    if threads is not None:
        torch.set_num_threads(threads)
    return RuntimeOptions(
        device=device,
        dtype=dtype,
        context_length=context,
        threads=threads,
        slots=positive_int(options, "slots") or DEFAULT_SLOTS,
        prefill_chunk=positive_int(options, "prefill_chunk") or DEFAULT_PREFILL_CHUNK,
        max_adapters=positive_int(options, "max_adapters") or DEFAULT_MAX_ADAPTERS,
    )


def resolve_context_length(requested: int | None, config: Any) -> int:
    """The context per slot: the option, else the model's own (capped at 4096)."""
    native = getattr(config, "max_position_embeddings", None)
    if requested is not None:
        return requested
    if isinstance(native, int) and native > 0:
        return min(native, DEFAULT_MAX_CONTEXT)
    return DEFAULT_MAX_CONTEXT


def resolve_device(value: str) -> torch.device:
    """The torch device a `device` option names ("auto": cuda when available, else cpu)."""
    import torch

    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(value)
    except RuntimeError as exc:
        raise ConfigError(f"Invalid torch device `{value}`.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device `{value}` was asked for but CUDA is not available.")
    return device


def _dtype(value: str, device: torch.device) -> torch.dtype:
    import torch

    if value == "auto":
        # Not bfloat16 on a CPU, even one with native bfloat16 (1.6x the decode rate at 16
        # rows, benchmarks/README.md): there a row's greedy text would depend on which
        # rows share its batch, as the matmul kernels round differently per batch size.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    name = _DTYPES.get(value.lower())
    if name is None:
        raise ConfigError(f"Invalid dtype `{value}`; use one of auto, {', '.join(_DTYPES)}.")
    return getattr(torch, name)


def positive_int(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Option `{key}` must be a positive integer, not {value!r}.")
    return value
