"""What a model will take in memory, read before it is loaded: its parameter count and
attention shape from the GGUF header or the Hugging Face config and safetensors headers
(no weights are read), then weights at the engine's dtype plus the KV cache its slots
hold (`slots x context x layers x 2 x kv_heads x head_dim`). The model manager judges a
first load by it (later loads by what the last one measured)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from gateway_torch.sources import ModelSource


@dataclass(frozen=True)
class Shape:
    parameters: int
    layers: int
    kv_heads: int
    head_dim: int
    native_context: int | None


def read_shape(source: ModelSource) -> Shape:
    """The model's shape from its files' headers; ValueError when they do not say."""
    if source.kind == "gguf":
        return _gguf_shape(source.path)
    return _hf_shape(source.path)


def footprint(shape: Shape, *, dtype_bytes: int, slots: int, context: int) -> int:
    """Bytes of the weights at `dtype_bytes` a value plus the KV cache of `slots`."""
    kv = slots * context * shape.layers * 2 * shape.kv_heads * shape.head_dim * dtype_bytes
    return shape.parameters * dtype_bytes + kv


def _gguf_shape(path: Path) -> Shape:
    import gguf

    reader = gguf.GGUFReader(str(path))

    def value(key: str) -> int | str | None:
        field = reader.fields.get(key)
        if field is None:
            return None
        part = field.parts[field.data[0]]
        return bytes(part).decode() if field.types[0] == gguf.GGUFValueType.STRING else int(part[0])

    arch = value("general.architecture")
    layers = value(f"{arch}.block_count")
    heads = value(f"{arch}.attention.head_count")
    kv_heads = value(f"{arch}.attention.head_count_kv") or heads
    width = value(f"{arch}.embedding_length")
    if not all(isinstance(v, int) and v > 0 for v in (layers, heads, kv_heads, width)):
        raise ValueError(f"{path.name} does not give its attention shape")
    context = value(f"{arch}.context_length")
    assert isinstance(layers, int) and isinstance(heads, int) and isinstance(width, int)
    assert isinstance(kv_heads, int)
    return Shape(
        parameters=sum(int(tensor.n_elements) for tensor in reader.tensors),
        layers=layers,
        kv_heads=kv_heads,
        head_dim=width // heads,
        native_context=context if isinstance(context, int) else None,
    )


def _hf_shape(folder: Path) -> Shape:
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)
    heads = int(config["num_attention_heads"])
    parameters = 0
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= int(dim)
                parameters += count
    if not parameters:
        raise ValueError(f"{folder} has no safetensors weights to count")
    return Shape(
        parameters=parameters,
        layers=int(config["num_hidden_layers"]),
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
        native_context=config.get("max_position_embeddings"),
    )
