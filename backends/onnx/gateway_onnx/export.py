"""The exported (and quantized) ONNX model of a weights folder, built once and cached.

`<data_dir>/onnx/<folder name>-<variant>-<hash>/model.onnx` (+ `model.onnx.data`; the
variant: `fp32`, `int8-b64`, `int8-b64-lora`, ..., `model_kind`): the
hash covers the weights' paths, sizes and modification times and the builder's version,
so changed weights or a new builder export again. The export is written to a temporary
folder and renamed, one process at a time (`gateway.utils.built_once`): a crash never
leaves a half-written model where a later start would load it, and the next export
removes what a killed one left.

Precisions (CPU): `fp32` (the weights as they are), `int8` and `int4`: weight-only,
block-wise asymmetric `MatMulNBits` for every matmul (blocks of `DEFAULT_BLOCK` values
unless the model's `block_size` option says otherwise), the output head included, with
`accuracy_level = 4` (activations quantized per block to int8 inside the kernel, the
fast integer path of ONNX Runtime's MLAS). Embeddings stay float32.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from gateway.utils import built_once

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8", "int4"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "int4")
BUILDER_VERSION = "2"
BLOCK_SIZES = (16, 32, 64, 128, 256)
"""What `MatMulNBits` takes: powers of two from 16."""
DEFAULT_BLOCK = {"int8": 64, "int4": 32}
"""Values per quantization block unless the `block_size` option says otherwise. int8 in
blocks of 64 served 16 streams 1.2x faster than in blocks of 32 (1.94x llama.cpp against
1.61x) and one stream 1.2x faster, for a mean KL of 0.0067 nats to float32 instead of
0.0043; blocks of 128 were no faster at 16 streams and slower at one (the runner pads a
lone token there, `gateway_onnx.runner`), at a KL of 0.011. benchmarks/README.md has the
figures."""
ACCURACY_LEVEL = 4
MODEL_FILE = "model.onnx"


def export_dir(folder: Path, data_dir: Path, version: str, kind: str) -> Path:
    """Where the `kind` export of `folder` by exporter `version` is cached."""
    parts = [version, kind]
    for file in sorted([folder / "config.json", *folder.glob("*.safetensors")]):
        stat = file.stat()
        parts.append(f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return data_dir / "onnx" / f"{folder.name}-{kind}-{digest}"


def block_of(precision: Precision, block_size: int | None = None) -> int:
    """The quantization block of `precision` (0 for fp32): `block_size` or the default."""
    if precision == "fp32":
        return 0
    return block_size or DEFAULT_BLOCK[precision]


def model_kind(precision: Precision, lora: bool = False, block_size: int | None = None) -> str:
    """The name of a causal export's variant: `fp32`, `int8-b128`, `int4-b32-lora`, ..."""
    block = block_of(precision, block_size)
    kind = f"{precision}-b{block}" if block else precision
    return f"{kind}-lora" if lora else kind


def model_dir(
    folder: Path,
    data_dir: Path,
    precision: Precision,
    lora: bool = False,
    block_size: int | None = None,
) -> Path:
    """Where the causal export of `folder` at `precision` (with LoRA inputs: `lora`;
    quantized in blocks of `block_size`) is cached."""
    return export_dir(folder, data_dir, BUILDER_VERSION, model_kind(precision, lora, block_size))


def ensure_exported(
    folder: Path,
    data_dir: Path,
    precision: Precision,
    lora: bool = False,
    block_size: int | None = None,
) -> Path:
    """The `model.onnx` of `folder` at `precision` (with LoRA inputs: `lora`; int8 and
    int4 quantized in blocks of `block_size`), exporting it first if not cached."""
    return cached_export(
        model_dir(folder, data_dir, precision, lora, block_size),
        lambda path: write_model(folder, path, precision, lora, block_size),
    )


def cached_export(target: Path, write: Callable[[Path], None]) -> Path:
    """The `model.onnx` in the cache folder `target` (an `export_dir`), written first by
    `write(path)` if there is none (`gateway.utils.built_once`: in a temporary folder
    renamed into place, one process at a time)."""

    def build(folder: Path) -> None:
        log.info("Exporting to ONNX, once: %s", target)
        started = time.perf_counter()
        write(folder / MODEL_FILE)
        log.info("Exported %s in %.1fs", target.name, time.perf_counter() - started)

    return built_once(target, MODEL_FILE, build) / MODEL_FILE


def write_model(
    folder: Path,
    path: Path,
    precision: Precision,
    lora: bool = False,
    block_size: int | None = None,
) -> None:
    import onnx

    from gateway_onnx.graph import build_graph

    model = build_graph(folder, lora)
    if precision != "fp32":
        bits = 8 if precision == "int8" else 4
        model = quantize(model, bits=bits, block_size=block_of(precision, block_size))
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")


def quantize(model: object, bits: int, block_size: int) -> object:
    """`model` with every MatMul by a constant replaced by a block-wise `MatMulNBits`."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=False,
        accuracy_level=ACCURACY_LEVEL,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    return quantizer.model.model
