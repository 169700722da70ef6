"""Fixtures: one training base (SmolLM2, float32) for the session, a serving engine on the
same adapter store, and contexts that record what a trainer reports.

The `data_dir` fixture comes from the repository's root conftest.py (run the tests from
the repository root with `-c pyproject.toml`).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_torch.causal import TorchBackend
from gateway_trainers.common.base import BaseModel, load_base
from trainer_helpers import MODEL, SPEC, Recorder

from gateway.adapters.store import AdapterStore
from gateway.training.trainer import TrainingContext


@pytest.fixture(scope="session")
def store(data_dir: Path) -> Iterator[AdapterStore]:
    adapters = AdapterStore.for_model(data_dir, MODEL)
    shutil.rmtree(adapters.root, ignore_errors=True)
    yield adapters
    shutil.rmtree(adapters.root, ignore_errors=True)


@pytest.fixture(scope="session")
def resident() -> dict[str, Any]:
    """The worker's `resident` dict, shared by every test (the base loads once)."""
    return {}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def context(
    data_dir: Path, store: AdapterStore, resident: dict[str, Any], recorder: Recorder
) -> TrainingContext:
    return TrainingContext(
        spec=SPEC,
        data_dir=data_dir,
        adapters=store,
        resident=resident,
        threads=0,
        on_step=recorder.on_step,
        on_log=recorder.logs.append,
    )


@pytest.fixture
def base(context: TrainingContext) -> BaseModel:
    return load_base(context)


@pytest.fixture(scope="session")
def engine(data_dir: Path, store: AdapterStore) -> Iterator[TorchBackend]:
    """The torch serving engine on the same model and adapter store."""
    backend = TorchBackend(SPEC, data_dir)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.unload())
