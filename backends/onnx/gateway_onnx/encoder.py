"""The ONNX graph of a sentence-embedding encoder (BERT family), exported once and cached.

Unlike the causal models (`gateway_onnx.graph`, written node by node), an encoder is
exported by tracing: its forward is one pass with no cache, so a trace has no per-step
glue to remove, and ONNX Runtime's transformer optimizer
(`onnxruntime.transformers.optimizer`, model type `bert`) then fuses the embeddings and
their LayerNorm, each layer's attention, bias + GELU and residual + LayerNorm into
single ops. The trace uses torch's TorchScript exporter (`dynamo=False`), the path that
optimizer's BERT fusions recognise.

`<data_dir>/onnx/<folder name>-encoder-<hash>/model.onnx`: the hash covers the weights'
paths, sizes and modification times and the exporter's version; written to a temporary
folder and renamed, like the causal export.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from gateway_onnx.export import cached_export

EXPORTER_VERSION = "encoder-1"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


def ensure_encoder_exported(model: Any, folder: Path, data_dir: Path) -> Path:
    """The fused `model.onnx` of the transformers encoder `model` (loaded from `folder`),
    exporting it first if not cached."""

    return cached_export(
        folder, data_dir, EXPORTER_VERSION, "encoder", lambda path: write_encoder(model, path)
    )


def write_encoder(model: Any, path: Path) -> None:
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    config = model.config
    names = [n for n in INPUTS if n != "token_type_ids" or config.type_vocab_size > 0]
    example = {name: torch.ones((2, 8), dtype=torch.long) for name in names}
    traced = path.with_name("traced.onnx")
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with torch.inference_mode(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's, whose graphs
        # the BERT fusions do not match yet; and transformers' mask code warns under a trace.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model.float().eval(),
            (),
            str(traced),
            kwargs=example,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    fused = optimize_model(
        str(traced),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
    )
    fused.save_model_to_file(str(path))
    traced.unlink()
