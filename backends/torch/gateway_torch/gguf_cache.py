"""One-time conversion of a GGUF file to a safetensors Hugging Face folder.

transformers de-quantizes a GGUF at every load (slow), and ignores the tokenizer metadata
that llama.cpp honours: `tokenizer.ggml.add_bos_token` and the bos/eos/padding token ids.
For SmolLM2 that means a BOS `<|im_start|>` prepended to every prompt and `<|im_start|>`
as EOS, which makes the model answer nonsense and never stop. The conversion applies the
GGUF's metadata to the tokenizer and generation config, then saves everything under
`data_dir/models/<stem>-<hash>`, written to a temporary folder and renamed atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.utils import built_once

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GgufTokenizerMeta:
    """The tokenizer settings a GGUF declares (None: not declared)."""

    add_bos: bool | None = None
    add_eos: bool | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None


def cache_dir_for(gguf_path: Path, data_dir: Path) -> Path:
    """The cache folder of a GGUF: keyed by its path, size and modification time."""
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return data_dir / "models" / f"{gguf_path.stem}-{digest}"


def ensure_converted(gguf_path: Path, data_dir: Path) -> Path:
    """The safetensors folder of `gguf_path`, converting it first if it is not cached."""
    target = cache_dir_for(gguf_path, data_dir)

    def build(folder: Path) -> None:
        convert(gguf_path, folder)
        _make_readable(folder)

    return built_once(target, "config.json", build)


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private folder; give the cache ordinary permissions."""
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Load `gguf_path` through transformers, fix its tokenizer, save it to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to safetensors (once)", gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    meta = read_tokenizer_meta(gguf_path)
    apply_tokenizer_meta(tokenizer, meta)
    apply_generation_meta(model, meta)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def read_tokenizer_meta(gguf_path: Path) -> GgufTokenizerMeta:
    """The `tokenizer.ggml.*` settings of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))

    def scalar(key: str) -> Any:
        field = reader.fields.get(key)
        if field is None or not field.data:
            return None
        return field.parts[field.data[0]][0].item()

    def flag(key: str) -> bool | None:
        value = scalar(key)
        return None if value is None else bool(value)

    def token(key: str) -> int | None:
        value = scalar(key)
        return None if value is None else int(value)

    return GgufTokenizerMeta(
        add_bos=flag("tokenizer.ggml.add_bos_token"),
        add_eos=flag("tokenizer.ggml.add_eos_token"),
        bos_id=token("tokenizer.ggml.bos_token_id"),
        eos_id=token("tokenizer.ggml.eos_token_id"),
        pad_id=token("tokenizer.ggml.padding_token_id"),
        unk_id=token("tokenizer.ggml.unknown_token_id"),
    )


def apply_tokenizer_meta(tokenizer: Any, meta: GgufTokenizerMeta) -> None:
    """Set the special tokens and the BOS/EOS behaviour a GGUF declares on `tokenizer`."""
    vocab = len(tokenizer)
    for attr, token_id in (
        ("bos_token", meta.bos_id),
        ("eos_token", meta.eos_id),
        ("pad_token", meta.pad_id),
        ("unk_token", meta.unk_id),
    ):
        if token_id is not None and 0 <= token_id < vocab:
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(token_id))
    for attr, value in (("add_bos_token", meta.add_bos), ("add_eos_token", meta.add_eos)):
        if value is not None and isinstance(getattr(type(tokenizer), attr, None), property):
            setattr(tokenizer, attr, value)  # the property rebuilds the post-processor
    if meta.add_bos is not None:
        _force_bos_behaviour(tokenizer, meta.add_bos)


def apply_generation_meta(model: Any, meta: GgufTokenizerMeta) -> None:
    """Make the model and generation configs agree with the GGUF's special tokens."""
    for config in (model.config, model.generation_config):
        if meta.bos_id is not None:
            config.bos_token_id = meta.bos_id
        if meta.eos_id is not None:
            config.eos_token_id = meta.eos_id
        if meta.pad_id is not None:
            config.pad_token_id = meta.pad_id


def _force_bos_behaviour(tokenizer: Any, add_bos: bool) -> None:
    """Fallback for tokenizer classes without an `add_bos_token` property."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None or not hasattr(tokenizer, "backend_tokenizer"):
        return
    adds = tokenizer("a").input_ids[:1] == [bos_id]
    if adds == add_bos:
        return
    from tokenizers import processors

    bos = tokenizer.bos_token
    if add_bos:
        single, pair = f"{bos} $A", f"{bos} $A {bos} $B:1"
        special = [(bos, bos_id)]
    else:
        single, pair, special = "$A", "$A $B:1", []
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=special
    )
    log.info("Rebuilt the post-processor of %s (add_bos=%s)", type(tokenizer).__name__, add_bos)
