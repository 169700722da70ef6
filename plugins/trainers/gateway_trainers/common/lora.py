"""LoRA on the resident base: attach a fresh or stored adapter, save it, detach it.

The base model stays resident between jobs, so a job attaches its LoRA layers to it and
`detach` takes them out again (peft's `unload`, which does not merge): the next job
starts from the same, bit-identical base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.training.trainer import TrainingContext
from gateway_trainers.common.base import BaseModel

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every linear projection of a Llama-family decoder layer (what the torch engine serves)."""


def attach_lora(base: BaseModel, config: dict[str, Any], context: TrainingContext) -> Any:
    """A peft model over `base.model` whose LoRA weights are the only trainable ones: a
    fresh LoRA (`lora_rank`, `lora_alpha`), or the stored adapter `base_adapter` to go on
    training (its own rank and alpha win)."""
    from peft import LoraConfig, get_peft_model

    name = config.get("base_adapter")
    if name:
        return _attach_stored(base, context.adapters.path(str(name), "base_adapter"))
    alpha: Any = float(config["lora_alpha"])  # peft annotates int; a float scales fine
    lora = LoraConfig(
        r=int(config["lora_rank"]),
        lora_alpha=alpha,
        target_modules=list(TARGET_MODULES),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base.model, lora)


def _attach_stored(base: BaseModel, path: Path) -> Any:
    """Attach the adapter at `path` as trainable; the base is left clean if it does not
    fit (the torch engine's reader says what differs)."""
    from gateway_engine.lora.weights import read_adapter
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    read_adapter(path, base.model, device="cpu")  # InvalidRequest when it does not fit
    lora = LoraConfig.from_pretrained(str(path))
    lora.inference_mode = False
    model = get_peft_model(base.model, lora)
    try:
        tensors = load_file(str(path / "adapter_model.safetensors"), device="cpu")
        result = set_peft_model_state_dict(model, tensors)
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise ValueError(
                f"The base adapter has weights the model does not use: {unexpected[:3]}"
            )
    except BaseException:
        detach(model)
        raise
    return model


def detach(peft_model: Any) -> None:
    """Take the LoRA layers out of the resident base (no merge): it is as loaded again."""
    base = peft_model.unload()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    # get_peft_model records its config on the base model; the next job adds its own.
    if hasattr(base, "peft_config"):
        del base.peft_config


def save_adapter(peft_model: Any, context: TrainingContext, name: str) -> Path:
    """Write the LoRA as a PEFT adapter (safetensors) and install it as `name` (atomically:
    staged, then renamed into place)."""
    context.phase("saving")
    staging = context.adapters.staging()
    try:
        peft_model.save_pretrained(
            str(staging), safe_serialization=True, save_embedding_layers=False
        )
        return context.install(staging, name)
    except BaseException:
        context.adapters.discard(staging)
        raise
