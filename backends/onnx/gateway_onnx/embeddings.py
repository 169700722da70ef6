"""`OnnxEmbeddingBackend`: the torch embeddings backend (tokenizer, pooling, batching,
truncation, normalisation) with the encoder's forward computed by ONNX Runtime from a
traced export (`gateway_onnx.encoder`). CPU only; float32, so its vectors are the torch
backend's to about 1e-6.

Options: the torch embeddings backend's (`context_length`, `batch_size`, `threads`). The
first start exports the encoder into the data directory (a few seconds for MiniLM); the
torch model is dropped once the session holds the graph.
"""

from __future__ import annotations

from typing import Any

from gateway_torch.embeddings import TorchEmbeddingBackend

from gateway.errors import ConfigError


class OnnxEmbeddingBackend(TorchEmbeddingBackend):
    """Sentence embeddings on ONNX Runtime (CPU)."""

    _session: Any = None
    _inputs: tuple[str, ...] = ()

    def _load_blocking(self) -> Any:
        import onnxruntime as ort

        from gateway_onnx.encoder import ensure_encoder_exported
        from gateway_onnx.runner import session_options

        encoder = super()._load_blocking()
        if encoder.device.type != "cpu":
            raise ConfigError('The onnx-embeddings backend runs on the CPU: set `device = "cpu"`.')
        path = ensure_encoder_exported(encoder.model, encoder.folder, self.data_dir)
        threads = self.spec.options.get("threads")
        self._session = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self._inputs = tuple(i.name for i in self._session.get_inputs())
        encoder.model = None  # the graph holds the weights now
        return encoder

    def encode(self, encoder: Any, batch: Any) -> Any:
        import torch

        feeds = {name: batch[name].numpy() for name in self._inputs}
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        return torch.from_numpy(hidden)

    def health(self) -> dict[str, Any]:
        health = super().health()
        if health.get("loaded"):
            health["runtime"] = "onnxruntime"
        return health
