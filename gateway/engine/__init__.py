"""Backend-facing contracts: the Backend ABC, capabilities, the model registry. No web code."""

from gateway.engine.backend import Backend, BackendFactory, Capability, ModelSpec
from gateway.engine.models import ModelHandle, ModelManager, ModelState

__all__ = [
    "Backend",
    "BackendFactory",
    "Capability",
    "ModelHandle",
    "ModelManager",
    "ModelSpec",
    "ModelState",
]
