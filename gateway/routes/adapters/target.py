"""Which model's adapters a request of this family manages."""

from __future__ import annotations

from gateway.adapters.store import AdapterStore
from gateway.engine import Backend, Capability
from gateway.errors import Unsupported
from gateway.gateway import Gateway


def adapter_model(gateway: Gateway, requested: str | None) -> str:
    """The model named `requested` (under the `unknown_models` setting), else the first
    model that serves adapters; a model without `Capability.ADAPTERS` is a 400."""
    try:
        name = gateway.model_for(requested, Capability.ADAPTERS)
    except Unsupported:  # no model has the capability
        raise Unsupported(
            "No served model serves LoRA adapters.", param="model", code="adapters_unsupported"
        ) from None
    if Capability.ADAPTERS not in gateway.models.handle(name).backend.capabilities:
        raise Unsupported(
            f"Model `{name}` does not serve LoRA adapters.",
            param="model",
            code="adapters_unsupported",
        )
    return name


def adapter_store(gateway: Gateway, requested: str | None) -> tuple[str, AdapterStore]:
    """The model and its adapter store, whether or not the model has finished loading."""
    name = adapter_model(gateway, requested)
    return name, gateway.models.handle(name).backend.adapters


def adapter_backend(gateway: Gateway, requested: str | None) -> tuple[str, Backend]:
    """The model and its backend, which must be ready (checking and merging adapters
    needs the loaded model): 503 while it loads."""
    name = adapter_model(gateway, requested)
    return name, gateway.models.get(name)
