"""The gateway plugin: registers the `onnx`, `auto` and `onnx-embeddings` backends.
Importing it stays light: ONNX Runtime is imported when a model on these backends loads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import hookimpl

if TYPE_CHECKING:
    from gateway.engine import Backend, BackendFactory, ModelSpec


def onnx_backend(spec: ModelSpec, data_dir: Path) -> Backend:
    from gateway_onnx.backend import OnnxBackend

    return OnnxBackend(spec, data_dir)


def auto_backend(spec: ModelSpec, data_dir: Path) -> Backend:
    from gateway_onnx.backend import AutoBackend

    return AutoBackend(spec, data_dir)


def onnx_embedding_backend(spec: ModelSpec, data_dir: Path) -> Backend:
    from gateway_onnx.embeddings import OnnxEmbeddingBackend

    return OnnxEmbeddingBackend(spec, data_dir)


@hookimpl
def register_backends(register: Callable[[str, BackendFactory], None]) -> None:
    register("onnx", onnx_backend)
    register("auto", auto_backend)
    register("onnx-embeddings", onnx_embedding_backend)
