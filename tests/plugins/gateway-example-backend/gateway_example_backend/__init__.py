"""A third-party backend, installed like any plugin: it shouts the prompt back.

It registers the backend `shout` and declares the model `example-shout` on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from gateway_schemas.canonical import GenerationChunk, GenerationRequest

from gateway import hookimpl
from gateway.engine import ModelSpec
from gateway.testing import EchoBackend


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
