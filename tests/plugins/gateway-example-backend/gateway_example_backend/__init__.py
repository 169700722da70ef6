"""A third-party backend and trainer, installed like any plugin: it shouts the prompt back.

It registers the backend `shout`, declares the model `example-shout` on it, and registers
the trainer `shout`, which "trains" by writing its examples, upper-cased, into an adapter
directory (no model: enough to show that a pip-installed trainer runs in the worker), and
the reward `brevity` (1 for an answer of 20 characters or fewer, else 0), which a
distillation job may score with instead of a judge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from gateway_schemas.canonical import GenerationChunk, GenerationRequest

from gateway import hookimpl
from gateway.distillation.reward import Reward
from gateway.engine import ModelSpec
from gateway.testing import EchoBackend
from gateway.training.trainer import Trainer, TrainingContext


class ShoutBackend(EchoBackend):
    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        async for chunk in super().generate(request):
            yield GenerationChunk(
                text=chunk.text.upper(),
                token_ids=chunk.token_ids,
                finish_reason=chunk.finish_reason,
                usage=chunk.usage,
                timings=chunk.timings,
            )


def _shout(spec: ModelSpec, data_dir: Path) -> ShoutBackend:
    return ShoutBackend(spec, data_dir)


@hookimpl
def register_backends(register):
    register("shout", _shout)


@hookimpl
def register_models(register, gateway):
    register(ModelSpec(name="example-shout", backend="shout"))


class ShoutTrainer(Trainer):
    name = "shout"

    def run(self, job, context: TrainingContext) -> Path:
        staging = context.adapters.staging()
        (staging / "adapter_config.json").write_text('{"r": 1}')
        (staging / "adapter_model.safetensors").write_text(" ".join(job.data).upper())
        context.step(1, 1, 0.0, 0.0, 1.0)
        return context.install(staging, job.output_name)


@hookimpl
def register_trainers(register):
    register(ShoutTrainer())


class BrevityReward(Reward):
    name = "brevity"

    def score(self, messages, responses):
        return [1.0 if len(response.strip()) <= 20 else 0.0 for response in responses]


@hookimpl
def register_rewards(register):
    register(BrevityReward())
