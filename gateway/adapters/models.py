"""Which served model a request about adapters (managing them, training one) is for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.engine import Capability
from gateway.errors import Unsupported

if TYPE_CHECKING:
    from gateway.gateway import Gateway


def adapter_model(
    gateway: Gateway,
    requested: str | None,
    *,
    refusal: str = "does not serve LoRA adapters",
    code: str = "adapters_unsupported",
    param: str = "model",
) -> str:
    """The model named `requested` (under the `unknown_models` setting), else the first
    model that serves adapters. A model without `Capability.ADAPTERS` is a 400 saying
    `Model ... {refusal}.` with `code`."""
    try:
        name = gateway.model_for(requested, Capability.ADAPTERS)
    except Unsupported:  # no model has the capability
        raise Unsupported(
            "No served model serves LoRA adapters.", param=param, code="adapters_unsupported"
        ) from None
    if Capability.ADAPTERS not in gateway.models.handle(name).backend.capabilities:
        raise Unsupported(f"Model `{name}` {refusal}.", param=param, code=code)
    return name
