"""The ONNX graph of a sentence-embedding encoder (BERT family), exported once and cached.

Unlike the causal models (`gateway_onnx.graph`, written node by node), an encoder is
exported by tracing: its forward is one pass with no cache, so a trace has no per-step
glue to remove. The trace uses torch's TorchScript exporter (`dynamo=False`); ONNX
Runtime's session-level optimizations (LayerNorm, GELU and MatMul + bias fusions) apply
when it loads. ONNX Runtime's offline BERT optimizer (`onnxruntime.transformers.optimizer`,
fused attention) was measured and left out: on MiniLM with 2 threads it was 2.9x slower
for one short text (5.8 vs 2.0 ms) and no faster for batches of 8 and 32.

`<data_dir>/onnx/<folder name>-encoder-<hash>/model.onnx`: the hash covers the weights'
paths, sizes and modification times and the exporter's version; written to a temporary
folder and renamed, like the causal export.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from gateway_onnx.export import cached_export, export_dir

EXPORTER_VERSION = "encoder-2"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


def ensure_encoder_exported(model: Any, folder: Path, data_dir: Path) -> Path:
    """The `model.onnx` of the transformers encoder `model` (loaded from `folder`),
    exporting it first if not cached."""
    target = export_dir(folder, data_dir, EXPORTER_VERSION, "encoder")
    return cached_export(target, lambda path: write_encoder(model, path))


def write_encoder(model: Any, path: Path) -> None:
    import torch

    config = model.config
    names = [n for n in INPUTS if n != "token_type_ids" or config.type_vocab_size > 0]
    example = {name: torch.ones((2, 8), dtype=torch.long) for name in names}
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with torch.inference_mode(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's, which needs
        # onnxscript; transformers' mask code warns under a trace.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model.float().eval(),
            (),
            str(path),
            kwargs=example,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
