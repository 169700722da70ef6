"""Which model's adapters a request of this family manages."""

from __future__ import annotations

from gateway.adapters.models import adapter_model
from gateway.adapters.store import AdapterStore
from gateway.engine import Backend
from gateway.gateway import Gateway


def adapter_store(gateway: Gateway, requested: str | None) -> tuple[str, AdapterStore]:
    """The model and its adapter store, whether or not the model has finished loading."""
    name = adapter_model(gateway, requested)
    return name, gateway.models.handle(name).backend.adapters


def adapter_backend(gateway: Gateway, requested: str | None) -> tuple[str, Backend]:
    """The model and its backend, which must be ready (checking and merging adapters
    needs the loaded model): 503 while it loads."""
    name = adapter_model(gateway, requested)
    return name, gateway.models.get(name)
