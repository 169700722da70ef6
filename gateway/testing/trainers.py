"""`StepTrainer`: a trainer with no model, for testing jobs, workers and their routes.

Not registered by default: a test registers this module as a plugin
(`pm.register(gateway.testing.trainers)`), and the training workers, which load the
server's plugins, get it too. Its job config: `steps` (default 3), `step_seconds` (default
0.05) slept per step, `fail_at` (a step at which it raises). It writes a small adapter
(a config and a weights file that are not real tensors): enough for the adapter store,
not for serving.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import InvalidRequest
from gateway.hookspecs import hookimpl
from gateway.jobs import Job
from gateway.training.trainer import Trainer, TrainingContext


class StepTrainer(Trainer):
    name = "steps"

    def check(self, data: Any, config: dict[str, Any]) -> None:
        if not isinstance(data, list) or not data:
            raise InvalidRequest("`data` must be a non-empty list.", param="data")

    def run(self, job: Job, context: TrainingContext) -> Path:
        steps = int(job.config.get("steps", 3))
        for step in range(1, steps + 1):
            time.sleep(float(job.config.get("step_seconds", 0.05)))
            if job.config.get("fail_at") == step:
                raise RuntimeError(f"failing at step {step} as asked")
            context.step(step, steps, 1.0 / step, 0.001, step / steps)
        context.log(f"trained on {len(job.data)} items")
        staging = context.adapters.staging()
        (staging / "adapter_config.json").write_text(json.dumps({"r": 1, "job": job.id}))
        (staging / "adapter_model.safetensors").write_bytes(b"not tensors")
        return context.install(staging, job.output_name)


@hookimpl
def register_trainers(register: Callable[[Trainer], None]) -> None:
    register(StepTrainer())
