"""Embeddings: inputs as text or token ids, vectors as floats or base64."""

from __future__ import annotations

import base64
import sys
from array import array
from typing import TYPE_CHECKING

from gateway_schemas.openai import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)

from gateway.engine import Capability
from gateway.errors import InvalidRequest, Unsupported
from gateway.services.prompts import prompt_batch

if TYPE_CHECKING:
    from gateway.engine import Backend
    from gateway.gateway import Gateway

MAX_INPUTS = 2048


async def embedding_inputs(backend: Backend, raw: str | list[str | int | list[int]]) -> list[str]:
    items = prompt_batch(raw, "input")
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(f"`input` may hold at most {MAX_INPUTS} items.", param="input")
    texts = []
    for index, item in enumerate(items):
        text = item if isinstance(item, str) else await backend.detokenize(item)
        if not text:
            raise InvalidRequest(f"`input[{index}]` is empty.", param="input")
        texts.append(text)
    return texts


def _base64(vector: list[float]) -> str:
    floats = array("f", vector)
    if sys.byteorder != "little":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode("ascii")


async def embed(gateway: Gateway, body: EmbeddingRequest) -> EmbeddingResponse:
    """Embed `body.input` with the model it names (none: the first embedding model)."""
    model = gateway.model_for(body.model, Capability.EMBED)
    backend = gateway.models.get(model)
    texts = await embedding_inputs(backend, body.input)
    result = await backend.embed(texts)
    dims = len(result.vectors[0]) if result.vectors else 0
    if body.dimensions is not None and body.dimensions != dims:
        raise Unsupported(
            f"Model `{model}` makes {dims}-dimension vectors and cannot shorten them.",
            param="dimensions",
        )
    encode = _base64 if body.encoding_format == "base64" else list
    return EmbeddingResponse(
        data=[EmbeddingData(index=i, embedding=encode(v)) for i, v in enumerate(result.vectors)],
        model=model,
        usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
    )
