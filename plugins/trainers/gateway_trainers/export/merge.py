"""Merge a stored LoRA adapter into its base model: a standalone Hugging Face folder."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gateway_trainers.export.files import staged_dir

log = logging.getLogger(__name__)


def merge(base_dir: Path, adapter_dir: Path, output: Path) -> Path:
    """Merge the PEFT adapter at `adapter_dir` into the Hugging Face model at `base_dir`
    (peft's `merge_and_unload`, computed in float32) and save the result into `output`: the
    weights as safetensors in the base's dtype, its tokenizer and generation config.

    `output` must not exist; it appears complete or not at all (written into a staging
    folder beside it, then renamed). An adapter that does not fit the base is an
    InvalidRequest (`adapter_mismatch`) saying what differs. Returns `output`.
    """
    import torch
    from gateway_engine.lora.weights import read_adapter
    from gateway_torch.imports import LOADING, transformers_module
    from peft import PeftModel

    transformers = transformers_module()
    started = time.perf_counter()
    with staged_dir(output) as staging:
        with LOADING:
            tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
            model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model.eval()
        read_adapter(adapter_dir, model, device="cpu")  # InvalidRequest when it does not fit
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        merged = peft_model.merge_and_unload()
        merged.to(saved_dtype(base_dir))
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    log.info(
        "merged %s into %s as %s in %.2fs",
        adapter_dir,
        base_dir,
        output,
        time.perf_counter() - started,
    )
    return output


def saved_dtype(model_dir: Path) -> Any:
    """The dtype the model at `model_dir` is stored in (its config's `dtype`, float32 when
    it names none): a merged model keeps its base's."""
    import torch

    config = json.loads((model_dir / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        return torch.float32
    return dtype
