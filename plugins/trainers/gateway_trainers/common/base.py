"""The base model a worker trains on: loaded once, kept in `context.resident`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.training.trainer import TrainingContext

log = logging.getLogger(__name__)

RESIDENT_KEY = "base"


@dataclass
class BaseModel:
    """A transformers causal LM (float32, frozen) with its tokenizer, on `device`."""

    model: Any
    tokenizer: Any
    device: Any
    folder: Path | None = None


def model_folder(context: TrainingContext) -> Path:
    """The Hugging Face folder of the worker's model (a GGUF is converted once, as the
    torch engine does)."""
    from gateway_torch.gguf_cache import ensure_converted
    from gateway_torch.imports import LOADING
    from gateway_torch.sources import resolve_source

    source = resolve_source(context.spec.source)
    if source.kind == "gguf":
        with LOADING:
            return ensure_converted(source.path, context.data_dir)
    return source.path


def train_device(context: TrainingContext) -> Any:
    """Where the worker trains: the model's `device` option (`auto`: CUDA when there is
    one). Training is always in float32, whatever dtype serving uses."""
    import torch

    wanted = str(context.spec.options.get("device", "auto"))
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


def load_base(context: TrainingContext) -> BaseModel:
    """The worker's base model, loaded on first use and reused by every later job."""
    import torch

    if context.threads > 0:
        torch.set_num_threads(context.threads)
    cached = context.resident.get(RESIDENT_KEY)
    if isinstance(cached, BaseModel):
        return cached
    from gateway_torch.imports import LOADING, transformers_module

    context.phase("loading")
    transformers = transformers_module()
    started = time.perf_counter()
    folder = model_folder(context)
    with LOADING:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    device = train_device(context)
    model.to(device)
    model.eval()  # no dropout anywhere: a step is deterministic given its seed
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = BaseModel(model=model, tokenizer=tokenizer, device=device, folder=folder)
    context.resident[RESIDENT_KEY] = base
    log.info("training base %s loaded in %.2fs", folder, time.perf_counter() - started)
    return base
