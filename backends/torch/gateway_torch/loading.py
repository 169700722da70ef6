"""Loading a causal LM and its tokenizer onto a device (blocking: run it in a thread)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway_engine.tokens import PromptEncoder, TokenPieces

from gateway_torch.gguf_cache import ensure_converted
from gateway_torch.options import RuntimeOptions, resolve_context_length
from gateway_torch.sources import ModelSource

log = logging.getLogger(__name__)


@dataclass
class CausalModel:
    """Everything the decode loop needs about one loaded causal LM."""

    model: Any
    tokenizer: Any
    encoder: PromptEncoder
    pieces: TokenPieces
    options: RuntimeOptions
    context_length: int
    vocab_size: int
    tokenizer_size: int
    eos_ids: frozenset[int]
    folder: Path
    load_seconds: float
    accepts_logits_to_keep: bool = field(default=False)

    @property
    def device(self) -> Any:
        return self.options.device


def load_causal(source: ModelSource, data_dir: Path, options: RuntimeOptions) -> CausalModel:
    """Load (converting a GGUF once) the model of `source` with `options`."""
    import inspect

    from gateway_torch.imports import LOADING, transformers_module

    transformers = transformers_module()
    AutoModelForCausalLM, AutoTokenizer = (
        transformers.AutoModelForCausalLM,
        transformers.AutoTokenizer,
    )

    started = time.perf_counter()
    folder = source.path
    if source.kind == "gguf":
        with LOADING:
            folder = ensure_converted(source.path, data_dir)
    with LOADING:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=options.dtype)
    model.to(options.device)
    model.eval()
    vocab_size = int(model.get_output_embeddings().weight.shape[0])
    accepts = "logits_to_keep" in inspect.signature(model.forward).parameters
    loaded = CausalModel(
        model=model,
        tokenizer=tokenizer,
        encoder=PromptEncoder(tokenizer, vocab_size),
        pieces=TokenPieces(tokenizer),
        options=options,
        context_length=resolve_context_length(options.context_length, model.config),
        vocab_size=vocab_size,
        tokenizer_size=len(tokenizer),
        eos_ids=_eos_ids(model, tokenizer),
        folder=folder,
        load_seconds=time.perf_counter() - started,
        accepts_logits_to_keep=accepts,
    )
    loaded.load_seconds = time.perf_counter() - started
    log.info("Loaded %s in %.2fs on %s", folder, loaded.load_seconds, options.device)
    return loaded


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a generation: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
