"""The gateway plugin: registers the `torch` and `torch-embeddings` backends.

Importing this module stays light: torch and transformers are imported by the backend
modules, which the factories import only when a model is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import hookimpl

if TYPE_CHECKING:
    from gateway.engine import Backend, BackendFactory, ModelSpec


def torch_backend(spec: ModelSpec, data_dir: Path) -> Backend:
    """Factory of the `torch` backend (causal language models)."""
    from gateway_torch.causal import TorchBackend

    return TorchBackend(spec, data_dir)


def torch_embedding_backend(spec: ModelSpec, data_dir: Path) -> Backend:
    """Factory of the `torch-embeddings` backend (sentence embeddings)."""
    from gateway_torch.embeddings import TorchEmbeddingBackend

    return TorchEmbeddingBackend(spec, data_dir)


@hookimpl
def register_backends(register: Callable[[str, BackendFactory], None]) -> None:
    from gateway_torch.threads import tune_openmp

    tune_openmp()  # before torch is imported (see gateway_torch.threads)
    register("torch", torch_backend)
    register("torch-embeddings", torch_embedding_backend)
