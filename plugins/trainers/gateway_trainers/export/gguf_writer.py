"""A merged Hugging Face model as a GGUF file, on the metadata of its base's GGUF.

The base's GGUF (the template) gives everything but the weights: architecture,
hyper-parameters, tokenizer (vocabulary, merges, special token ids, BOS/EOS behaviour)
and chat template are copied as they are, and the merged weights are written under the
template's tensor names, shapes and order. Only `general.file_type` changes.

Llama-architecture GGUFs keep the rows of each attention head's Q and K projections in
the interleaved rotary order llama.cpp computes in; Hugging Face keeps them as two halves
(transformers' GGUF loader converts back when it reads one). The writer converts the
merged Q and K weights to the GGUF order.

Tensor types follow llama.cpp's converter: one-dimensional tensors (norms) stay float32,
matrices get the asked type, and a matrix whose rows do not split into the type's blocks
falls back to f16. Types the `gguf` package cannot write are made from an f16 file by a
configured `llama-quantize`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import Unsupported
from gateway_trainers.export.errors import ExportError
from gateway_trainers.export.files import staged_file, temp_sibling
from gateway_trainers.export.gguf_header import read_scalars
from gateway_trainers.export.quantize import run_llama_quantize
from gateway_trainers.export.types import PARAM, check_types, needs_llama_quantize

if TYPE_CHECKING:
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama",)
"""GGUF architectures the writer knows the tensor layout of (tested: SmolLM2, Llama)."""
ROPE_PERMUTED = ("llama",)
"""Architectures whose GGUF Q/K rows are in interleaved rotary order."""
SKIPPED_KEYS = ("general.architecture", "general.file_type")
"""Template keys not copied: the writer sets the architecture itself, and the file type
is the export's."""


def gguf_unsupported_reason(template: Path | None) -> str | None:
    """Why a merged model on this base cannot be written as GGUF (None: it can). Reads
    the template's scalar metadata only (milliseconds: fit for a submission check)."""
    if template is None:
        return (
            "GGUF export needs a model served from a GGUF file (its metadata is the "
            "template of the export); this model is a Hugging Face folder."
        )
    try:
        header = read_scalars(template)
    except (OSError, ValueError) as exc:
        return f"The model's GGUF file `{template.name}` cannot be read: {exc}"
    architecture = header.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        return (
            f"GGUF export supports the architectures {', '.join(SUPPORTED_ARCHITECTURES)}; "
            f"this model is `{architecture}`."
        )
    if int(header.get("split.count", 1)) > 1:
        return "GGUF export needs the model in one GGUF file; this one is split."
    return None


def can_write_gguf(template: Path | None) -> bool:
    """Whether a merged model on this base can be written as GGUF (see
    `gguf_unsupported_reason`)."""
    return gguf_unsupported_reason(template) is None


def check_gguf(template: Path | None, param: str = PARAM) -> None:
    """Refuse GGUF export early (Unsupported, naming `param`) when it cannot be written."""
    reason = gguf_unsupported_reason(template)
    if reason is not None:
        raise Unsupported(reason, param=param, code="gguf_export_unsupported")


def write_gguf(
    merged_dir: Path,
    output: Path,
    qtype: str,
    *,
    template: Path | None = None,
    llama_quantize: str | None = None,
) -> Path:
    """Write the Hugging Face model at `merged_dir` (a merge's output) as a GGUF file of
    type `qtype` (lower case: `f16`, `q8_0`, `q4_k_m`) at `output`, on the metadata of
    `template`, the GGUF its base came from.

    Types the `gguf` package writes are written directly; the others need the
    `llama_quantize` binary, run on an f16 GGUF (InvalidRequest without one). Unsupported
    when the base has no usable template; ExportError when the merged model does not match
    the template or llama-quantize fails. `output` must not exist; it appears complete or
    not at all (a hidden temporary file beside it, then renamed). Returns `output`.
    """
    check_types([qtype], llama_quantize)
    check_gguf(template)
    assert template is not None  # check_gguf refused None
    started = time.perf_counter()
    with staged_file(output) as partial:
        if needs_llama_quantize(qtype):
            assert llama_quantize is not None  # check_types refused it otherwise
            f16 = temp_sibling(output, ".f16.gguf")
            try:
                _write(merged_dir, f16, "f16", template)
                run_llama_quantize(llama_quantize, f16, partial, qtype)
            finally:
                f16.unlink(missing_ok=True)
        else:
            _write(merged_dir, partial, qtype, template)
    log.info(
        "wrote %s (%s, %d bytes) in %.2fs",
        output,
        qtype,
        output.stat().st_size,
        time.perf_counter() - started,
    )
    return output


@dataclass(frozen=True)
class _Planned:
    """One tensor to write: where it comes from and how it is stored."""

    gguf_name: str
    hf_name: str
    file: Path
    shape: tuple[int, ...]
    """numpy order (rows first), as in the safetensors file."""
    ggml_type: GGMLQuantizationType
    heads: int | None
    """Heads to reorder the rows of into rotary-interleaved order (Q and K), else None."""


def _write(merged_dir: Path, path: Path, qtype: str, template: Path) -> None:
    """Write `merged_dir` as a `qtype` GGUF (a type the `gguf` package writes) at `path`."""
    from gguf import GGUFReader, GGUFWriter

    reader = GGUFReader(str(template))
    architecture = _string(reader, "general.architecture")
    plan = _plan(merged_dir, reader, architecture, qtype)
    writer = GGUFWriter(str(path), architecture)
    try:
        _copy_metadata(reader, writer, qtype)
        for item in plan:
            nbytes = math.prod(_byte_shape(item.shape, item.ggml_type))
            writer.add_tensor_info(
                item.gguf_name,
                _byte_shape(item.shape, item.ggml_type),
                _uint8(),
                nbytes,
                raw_dtype=item.ggml_type,
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for item in plan:
            writer.write_tensor_data(_tensor_bytes(item))
    finally:
        writer.close()


def _plan(merged_dir: Path, reader: GGUFReader, architecture: str, qtype: str) -> list[_Planned]:
    """Every template tensor, in the template's order, with its merged source. ExportError
    when the merged model's tensors or shapes differ from the template's."""
    import gguf
    from safetensors import safe_open

    config = json.loads((merged_dir / "config.json").read_text())
    heads = _int(reader, f"{architecture}.attention.head_count")
    kv_heads = _int(reader, f"{architecture}.attention.head_count_kv") or heads
    blocks = _int(reader, f"{architecture}.block_count")
    for key, value in (
        ("num_attention_heads", heads),
        ("num_key_value_heads", kv_heads),
        ("num_hidden_layers", blocks),
    ):
        if key in config and value is not None and int(config[key]) != value:
            raise ExportError(
                f"The merged model's `{key}` is {config[key]}; its GGUF template has {value}."
            )
    arch = {name: member for member, name in gguf.MODEL_ARCH_NAMES.items()}[architecture]
    names = gguf.get_tensor_name_map(arch, blocks or 0)
    sources: dict[str, tuple[str, Path, tuple[int, ...]]] = {}
    for hf_name, file in _tensor_files(merged_dir).items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"The merged tensor `{hf_name}` has no GGUF name.")
        with safe_open(str(file), framework="pt") as tensors:
            shape = tuple(tensors.get_slice(hf_name).get_shape())
        sources[gguf_name] = (hf_name, file, shape)
    wanted = [tensor.name for tensor in reader.tensors]
    if config.get("tie_word_embeddings") and "output.weight" not in wanted:
        sources.pop("output.weight", None)  # the tied lm_head: the embedding serves
    missing = [name for name in wanted if name not in sources]
    extra = sorted(set(sources) - set(wanted))
    if missing or extra:
        raise ExportError(
            f"The merged model's tensors differ from its GGUF template's: missing "
            f"{missing[:5] or 'none'}, not in the template {extra[:5] or 'none'}."
        )
    plan = []
    for tensor in reader.tensors:
        hf_name, file, shape = sources[tensor.name]
        expected = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        if shape != expected:
            raise ExportError(
                f"`{hf_name}` has the shape {list(shape)}; the template's `{tensor.name}` "
                f"has {list(expected)}."
            )
        rope_heads = None
        if architecture in ROPE_PERMUTED:
            if tensor.name.endswith("attn_q.weight"):
                rope_heads = heads
            elif tensor.name.endswith("attn_k.weight"):
                rope_heads = kv_heads
        plan.append(
            _Planned(
                gguf_name=tensor.name,
                hf_name=hf_name,
                file=file,
                shape=shape,
                ggml_type=_tensor_type(qtype, shape),
                heads=rope_heads,
            )
        )
    return plan


def _tensor_files(merged_dir: Path) -> dict[str, Path]:
    """Each tensor of a saved model and the safetensors file holding it (one file, or the
    shards an index names)."""
    from safetensors import safe_open

    index = merged_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: merged_dir / file for name, file in weight_map.items()}
    single = merged_dir / "model.safetensors"
    if not single.is_file():
        raise ExportError(f"`{merged_dir}` holds no safetensors model.")
    with safe_open(str(single), framework="pt") as tensors:
        return {name: single for name in tensors.keys()}  # noqa: SIM118 (not a dict)


def _tensor_type(qtype: str, shape: tuple[int, ...]) -> GGMLQuantizationType:
    """How one tensor is stored in a `qtype` file (see the module docstring)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(shape) < 2:
        return GGMLQuantizationType.F32
    wanted = GGMLQuantizationType[qtype.upper()]
    if shape[-1] % GGML_QUANT_SIZES[wanted][0] != 0:
        return GGMLQuantizationType.F16
    return wanted


def _tensor_bytes(item: _Planned) -> np.ndarray:
    """One tensor as stored: float32, Q/K rows reordered, converted to its type."""
    import numpy as np
    from gguf.quants import quantize
    from safetensors import safe_open

    with safe_open(str(item.file), framework="pt") as tensors:
        weights = tensors.get_tensor(item.hf_name).float().numpy()
    if item.heads is not None:
        weights = rope_interleave(weights, item.heads)
    stored = quantize(np.ascontiguousarray(weights, dtype=np.float32), item.ggml_type)
    return np.ascontiguousarray(stored).view(np.uint8)


def rope_interleave(weights: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the rows of a Q or K projection (`heads` heads) from Hugging Face's rotary
    layout (each head's rows as two halves) to the GGUF one (the halves interleaved: row
    2i is the first half's row i, row 2i+1 the second half's)."""
    rows = weights.shape[0]
    if rows % (2 * heads) != 0:
        raise ExportError(f"A projection of {rows} rows does not split into {heads} heads.")
    halves = weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
    return halves.swapaxes(1, 2).reshape(weights.shape)


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter, qtype: str) -> None:
    """Every key of the template but the architecture (the writer's own) and the file
    type (the export's), with its value type."""
    from gguf import GGUFValueType, LlamaFileType

    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in SKIPPED_KEYS:
            continue
        main = field.types[0]
        if main == GGUFValueType.ARRAY:
            if len(field.types) != 2:
                raise ExportError(f"The template's `{key}` is a nested array; not supported.")
            writer.add_key_value(key, field.contents(), main, sub_type=field.types[1])
        else:
            writer.add_key_value(key, field.contents(), main)
    file_type = "ALL_F32" if qtype == "f32" else f"MOSTLY_{qtype.upper()}"
    writer.add_file_type(int(LlamaFileType[file_type]))
    if "general.quantization_version" not in reader.fields:
        from gguf import GGML_QUANT_VERSION

        writer.add_quantization_version(GGML_QUANT_VERSION)


def _byte_shape(shape: tuple[int, ...], ggml_type: GGMLQuantizationType) -> tuple[int, ...]:
    from gguf.quants import quant_shape_to_byte_shape

    return quant_shape_to_byte_shape(shape, ggml_type)


def _uint8() -> Any:
    import numpy as np

    return np.dtype(np.uint8)


def _string(reader: GGUFReader, key: str) -> str:
    field = reader.fields.get(key)
    return "" if field is None else str(field.contents())


def _int(reader: GGUFReader, key: str) -> int | None:
    field = reader.fields.get(key)
    return None if field is None else int(field.contents())
