"""Every configuration of `examples/` is valid as written: it loads, and a gateway builds
its models from it (backends found, plugin sections checked), without serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.gateway import Gateway
from gateway.settings import load_settings

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.toml"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"gateway.toml", "echo.toml", "distillation.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_an_example_config_builds_a_gateway(path: Path, tmp_path: Path):
    settings = load_settings(path, environ={"GATEWAY_DATA_DIR": str(tmp_path)})
    gateway = Gateway(settings)
    assert [h.spec.name for h in gateway.models]
