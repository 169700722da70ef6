"""Where an export finds its base model: the Hugging Face folder the adapter is merged
into, and the GGUF file that folder was converted from (the GGUF export's template)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.engine import ModelSpec


@dataclass(frozen=True)
class ExportBase:
    """A served torch model's files: `folder` (Hugging Face, safetensors) and `template`
    (its source GGUF, None when the model is served from a Hugging Face folder)."""

    folder: Path
    template: Path | None


def gguf_template(spec: ModelSpec) -> Path | None:
    """The GGUF file a torch model is served from (None: a Hugging Face folder). Cheap: it
    resolves the source without loading or converting anything (for submission checks)."""
    from gateway_torch.sources import resolve_source

    source = resolve_source(spec.source)
    return source.path if source.kind == "gguf" else None


def export_base(spec: ModelSpec, data_dir: Path) -> ExportBase:
    """The files an export of a `spec` model starts from, as training finds them
    (`common.base.model_folder`): a GGUF source is converted once into `data_dir`'s model
    cache (a no-op when the torch engine or a trainer already did). Call it in the worker."""
    from gateway_torch.gguf_cache import ensure_converted
    from gateway_torch.imports import LOADING
    from gateway_torch.sources import resolve_source

    source = resolve_source(spec.source)
    if source.kind == "gguf":
        with LOADING:
            folder = ensure_converted(source.path, data_dir)
        return ExportBase(folder=folder, template=source.path)
    return ExportBase(folder=source.path, template=None)
