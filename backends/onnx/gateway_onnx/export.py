"""The exported (and quantized) ONNX model of a weights folder, built once and cached.

`<data_dir>/onnx/<folder name>-<variant>-<hash>/model.onnx` (+ `model.onnx.data`; the
variant: `fp32`, `int8-b64-i.out.gate_up`, `int4-b32-lora`, ..., `Variant.kind`): the
hash covers the weights' paths, sizes and modification times and the builder's version,
so changed weights or a new builder export again. The export is written to a temporary
folder and renamed, one process at a time (`gateway.utils.built_once`): a crash never
leaves a half-written model where a later start would load it, and the next export
removes what a killed one left.

Precisions (CPU): `fp32` (the weights as they are), `int8` and `int4`: weight-only,
block-wise asymmetric `MatMulNBits` for the matmuls (blocks of `DEFAULT_BLOCK` values
unless the model's `block_size` option says otherwise), the output head included, with
`accuracy_level = 4` (activations quantized per block to int8 inside the kernel, the
fast integer path of ONNX Runtime's MLAS). At int8, the projections of `DEFAULT_INTEGER`
(or the `integer_projections` option's) are integer matmuls instead: int8 weights per
column times int8 activations per row. Every quantized export's projection inputs are
smoothed from a calibration (`gateway_onnx.graph`, `gateway_onnx.calibrate`). Embeddings
stay float32.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.utils import built_once

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8", "int4"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "int4")
BUILDER_VERSION = "5"
BLOCK_SIZES = (16, 32, 64, 128, 256)
"""What `MatMulNBits` takes: powers of two from 16."""
DEFAULT_BLOCK = {"int8": 64, "int4": 32}
"""Values per `MatMulNBits` block unless the `block_size` option says otherwise. Measured
weight-only and unsmoothed, int8 in blocks of 64 served 16 streams 1.2x faster than in
blocks of 32 (1.94x llama.cpp against 1.61x) and one stream 1.2x faster, for a mean KL of
0.0067 nats to float32 instead of 0.0043; blocks of 128 were no faster at 16 streams and
slower at one (the runner pads a lone token there, `gateway_onnx.runner`), at a KL of
0.011. benchmarks/README.md has the figures."""
DEFAULT_INTEGER: tuple[str, ...] = ("out", "gate_up")
"""The int8 projections that run as integer matmuls unless the `integer_projections`
option says otherwise. Measured on the benchmark machine (which has AMX), one run: these
two served 437 tokens/s with 16 streams (2.0x llama-server) and 123 with one (1.09x), at
a mean KL to float32 of 0.0049 nats (top choice the same 96.7% of the time). All five
served 640 (3.0x) and 137 (1.21x) but at 0.015 nats (93.5%), and changed the default
model's greedy answers enough to break two of the real-model tests (a JSON object that no
longer closed within 400 tokens, a distillation teacher whose answers changed): it is the
`integer_projections` choice for speed, not the default. Weight-only (`[]`): 412 and 122,
0.0029 nats. benchmarks/README.md has the figures."""
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


@dataclass(frozen=True)
class Variant:
    """Which export of a model: its precision, LoRA inputs, quantization block and
    integer projections (None: `DEFAULT_INTEGER` at int8, none otherwise)."""

    precision: Precision = "int8"
    lora: bool = False
    block_size: int | None = None
    integer: tuple[str, ...] | None = None

    @property
    def block(self) -> int:
        """Values per `MatMulNBits` block (0 for fp32)."""
        if self.precision == "fp32":
            return 0
        return self.block_size or DEFAULT_BLOCK[self.precision]

    @property
    def integer_projections(self) -> tuple[str, ...]:
        """The projections written as integer matmuls, in `PROJECTIONS` order."""
        from gateway_onnx.graph import PROJECTIONS

        chosen = DEFAULT_INTEGER if self.integer is None else self.integer
        if self.precision != "int8":
            if self.integer:
                raise ValueError(f"integer projections are int8; this is {self.precision}")
            return ()
        return tuple(p for p in PROJECTIONS if p in chosen)

    @property
    def smoothed(self) -> frozenset[str]:
        """The projections whose inputs are smoothed: all that can be (`SMOOTHED`), when
        quantized."""
        from gateway_onnx.graph import SMOOTHED

        return frozenset() if self.precision == "fp32" else SMOOTHED

    @property
    def kind(self) -> str:
        """The variant's name: `fp32`, `int8-b64-i.out.gate_up`, `int4-b32-lora`..."""
        kind = f"{self.precision}-b{self.block}" if self.block else self.precision
        if self.integer_projections:
            kind += "-i." + ".".join(self.integer_projections)
        return f"{kind}-lora" if self.lora else kind


def model_dir(folder: Path, data_dir: Path, variant: Variant) -> Path:
    """Where `variant` of the model in `folder` is cached."""
    return export_dir(folder, data_dir, BUILDER_VERSION, variant.kind)


def ensure_exported(folder: Path, data_dir: Path, variant: Variant) -> Path:
    """The `model.onnx` of `variant` of the model in `folder`, exported first if it is
    not cached."""
    return cached_export(
        model_dir(folder, data_dir, variant), lambda path: write_model(folder, path, variant)
    )


def cached_export(target: Path, write: Callable[[Path], None]) -> Path:
    """The `model.onnx` in the cache folder `target` (an `export_dir`), written first by
    `write(path)` if there is none (`gateway.utils.built_once`: in a temporary folder
    renamed into place, one process at a time). A new export replaces the same variant's
    older ones (`stale_exports`), which a new builder version or changed weights leave."""

    def build(folder: Path) -> None:
        log.info("Exporting to ONNX, once: %s", target)
        started = time.perf_counter()
        write(folder / MODEL_FILE)
        log.info("Exported %s in %.1fs", target.name, time.perf_counter() - started)
        for stale in stale_exports(target):
            log.info("Removing the outdated export %s", stale.name)
            shutil.rmtree(stale, ignore_errors=True)
            stale.with_name(stale.name + ".lock").unlink(missing_ok=True)

    return built_once(target, MODEL_FILE, build) / MODEL_FILE


def stale_exports(target: Path) -> list[Path]:
    """The other exports of `target`'s weights and variant: the folders beside it whose
    name differs only in the hash (`export_dir`)."""
    prefix, _, _ = target.name.rpartition("-")
    return [
        path
        for path in target.parent.glob(f"{prefix}-*")
        if path != target
        and path.is_dir()
        and re.fullmatch(r"[0-9a-f]{12}", path.name.removeprefix(prefix + "-"))
    ]


def write_model(folder: Path, path: Path, variant: Variant) -> None:
    import onnx

    from gateway_onnx.graph import build_graph

    peaks = None
    if variant.smoothed:
        from gateway_onnx.calibrate import input_peaks

        log.info("Calibrating the smoothing of the projections' inputs")
        peaks = input_peaks(folder)
    model = build_graph(
        folder,
        variant.lora,
        variant.integer_projections,
        peaks,
        variant.smoothed,
        lora_integer=variant.precision != "fp32",
    )
    if variant.precision != "fp32":
        bits = 8 if variant.precision == "int8" else 4
        model = quantize(model, bits=bits, block_size=variant.block)
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
