"""The torch backend's behavioural tests of the engine (generation, stops, logprobs,
seeds, aborts, token-id prompts, concurrency, grammar and JSON-schema constraints, LoRA
adapters against peft's merged model) run unchanged against the onnx backend: the same
engine core over another runner. Its embedding tests run against the onnx-embeddings
backend.

The test functions are taken from the torch backend's test modules; their `smol` and
`minilm` fixtures resolve to this folder's (conftest.py: the onnx backend at fp32, and
the onnx-embeddings backend).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TORCH_TESTS = Path(__file__).resolve().parents[2] / "torch" / "tests"


def _load(name: str) -> ModuleType:
    if str(TORCH_TESTS) not in sys.path:
        sys.path.insert(0, str(TORCH_TESTS))  # they import their sibling test_causal
    spec = importlib.util.spec_from_file_location(
        f"torch_contract_{name}", TORCH_TESTS / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHARED_FIXTURES = {"adapters"}
"""Fixtures of those modules the tests need beside this folder's `smol`."""
TORCH_ONLY = {"test_the_pool_keeps_the_most_recently_used"}
"""Tests that build a torch backend of their own."""

for _name in ("test_causal", "test_constraints", "test_lora_engine", "test_embeddings"):
    for _key, _value in vars(_load(_name)).items():
        wanted = _key.startswith("test_") and callable(_value) and _key not in TORCH_ONLY
        if wanted or _key in SHARED_FIXTURES:
            globals()[_key] = _value
