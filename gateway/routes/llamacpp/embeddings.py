"""llama.cpp's native embedding and reranking answers (/embedding, /embeddings, /rerank)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway_schemas.llamacpp import EmbeddingRequest, RerankRequest
from msgspec import UNSET

from gateway.errors import InvalidRequest

if TYPE_CHECKING:
    from gateway.engine import Backend


async def embedding_texts(backend: Backend, data: EmbeddingRequest) -> list[str]:
    """`input` (or `content`): a text, token ids, or a list of texts and token-id lists.
    Token ids are read back as the text they spell."""
    raw = data.input if data.input is not UNSET else data.content
    if raw is UNSET:
        raise InvalidRequest('"input" or "content" must be provided')
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif raw and all(isinstance(p, int) for p in raw):
        items = [list(raw)]
    elif any(isinstance(p, int) for p in raw):
        raise InvalidRequest("`content` mixes token ids with texts or token lists.")
    else:
        items = list(raw)
    texts = [item if isinstance(item, str) else await backend.detokenize(item) for item in items]
    if not texts or any(not t for t in texts):
        raise InvalidRequest("Input content cannot be empty")
    return texts


def normalize(vector: Sequence[float], mode: int) -> list[float]:
    """llama.cpp's `embd_normalize`: -1 none, 0 max-abs (int16 range), 1 taxicab,
    2 Euclidean, p > 2 the p-norm."""
    if mode < 0:
        return list(vector)
    if mode == 0:
        scale = max((abs(x) for x in vector), default=0.0) / 32760.0
    elif mode == 1:
        scale = sum(abs(x) for x in vector)
    elif mode == 2:
        scale = math.sqrt(sum(x * x for x in vector))
    else:
        scale = sum(abs(x) ** mode for x in vector) ** (1.0 / mode)
    return [x / scale for x in vector] if scale > 0 else list(vector)


async def native_embeddings(backend: Backend, data: EmbeddingRequest) -> list[dict[str, Any]]:
    """`[{"index", "embedding": [[...]]}, ...]`: one pooled vector per input."""
    result = await backend.embed(await embedding_texts(backend, data))
    return [
        {"index": i, "embedding": [normalize(v, data.embd_normalize)]}
        for i, v in enumerate(result.vectors)
    ]


def rerank_documents(data: RerankRequest) -> list[str]:
    documents = data.documents if data.documents is not UNSET else data.texts
    if documents is UNSET:
        raise InvalidRequest('"documents" must be provided')
    if not documents:
        raise InvalidRequest('"documents" must be a non-empty string array')
    return list(documents)


async def rerank(backend: Backend, model: str, data: RerankRequest) -> dict[str, Any]:
    """Documents scored by cosine similarity to the query, best first (at most `top_n`)."""
    documents = rerank_documents(data)
    result = await backend.embed([data.query, *documents])
    query, *vectors = (normalize(v, 2) for v in result.vectors)
    scores = [sum(a * b for a, b in zip(query, d, strict=True)) for d in vectors]
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    top = order[: data.top_n] if data.top_n else order
    return {
        "model": model,
        "object": "list",
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        "results": [
            {"index": i, "relevance_score": scores[i]}
            | ({"document": {"text": documents[i]}} if data.return_text else {})
            for i in top
        ],
    }
