"""Kiln's `POST /v1/completions/batch`: every prompt completed `n` times, all at once.

Each (prompt, completion) pair is one chat generation, built as the OpenAI chat route
builds its choices (`gateway.routes.openai.translate.chat_requests`); all of them run
concurrently and the engine batches them. Output j of prompt i gets seed `seed + i*n + j`.
One adapter set (`adapter` or `adapters`, else the server default) serves the whole batch.
"""

from __future__ import annotations

import time
import uuid

from gateway_schemas.canonical import GenerationRequest
from gateway_schemas.openai import ChatCompletionRequest, ChatMessageIn
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody

from gateway.engine import Capability
from gateway.errors import InvalidRequest
from gateway.gateway import Gateway
from gateway.routes.adapters.bodies import (
    BatchCompletion,
    BatchCompletionUsage,
    BatchRequest,
    BatchResponse,
)
from gateway.routes.adapters.controllers import ERRORS
from gateway.routes.openai import translate as tr
from gateway.routes.openai.controllers import served_adapters
from gateway.services.generation import Generation

MAX_OUTPUTS = 64
"""Completions one batch may ask for (prompts x n), as Kiln."""
DEFAULT_MAX_TOKENS = 2048
"""Tokens per completion when neither the request nor `[generation] max_tokens` sets a
limit, as Kiln."""
INVALID = "batch_invalid_request"
BODY_LIMIT = 8 * 1024**2


def batch_requests(
    body: BatchRequest, batch_id: str, model: str, default_max_tokens: int | None = None
) -> list[GenerationRequest]:
    """The generations of a batch, prompt by prompt, `n` each. A request without a token
    limit gets `default_max_tokens` (the `[generation] max_tokens` setting), else Kiln's 2048."""
    outputs = len(body.prompts) * body.n
    if outputs > MAX_OUTPUTS:
        raise InvalidRequest(
            f"The batch asks for {outputs} completions ({len(body.prompts)} prompts x "
            f"n={body.n}); at most {MAX_OUTPUTS} are allowed.",
            param="prompts",
            code="batch_too_large",
        )
    requests: list[GenerationRequest] = []
    for index, prompt in enumerate(body.prompts):
        messages = (
            [ChatMessageIn(role="user", content=prompt)] if isinstance(prompt, str) else prompt
        )
        chat = ChatCompletionRequest(
            model=model,
            messages=messages,
            n=body.n,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            max_tokens=body.max_tokens
            or body.max_completion_tokens
            or default_max_tokens
            or DEFAULT_MAX_TOKENS,
            stop=body.stop,
            seed=None if body.seed is None else body.seed + index * body.n,
            adapter=body.adapter,
            adapters=body.adapters,
        )
        requests += tr.chat_requests(chat, f"{batch_id}-{index}", model)
    return requests


def _completion(index: int, n: int, result: Generation) -> BatchCompletion:
    usage = result.final.usage
    prompt_tokens = usage.prompt_tokens if usage is not None else 0
    completion_tokens = usage.completion_tokens if usage is not None else len(result.token_ids)
    return BatchCompletion(
        prompt_index=index // n,
        completion_index=index % n,
        text=result.text,
        finish_reason=tr.finish_reason(result.final.finish_reason),
        usage=BatchCompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )


class BatchController(Controller):
    path = "/v1/completions"

    @post(
        "/batch",
        status_code=200,
        opt={"invalid_code": INVALID},
        request_max_body_size=BODY_LIMIT,
        responses={200: ResponseSpec(BatchResponse), **ERRORS},
    )
    async def batch(
        self, data: JSONBody[BatchRequest], gateway: NamedDependency[Gateway]
    ) -> BatchResponse:
        batch_id = f"batchcmpl-{uuid.uuid4()}"
        model = gateway.model_for(data.model, Capability.CHAT)
        requests = batch_requests(data, batch_id, model, gateway.settings.generation.max_tokens)
        gateway.models.get(model)
        results = await gateway.generation.complete_many(requests)
        return BatchResponse(
            id=batch_id,
            created=int(time.time()),
            model=model,
            completions=[_completion(i, data.n, r) for i, r in enumerate(results)],
            usage=tr.usage([r.final.usage for r in results], prompts=len(data.prompts)),
            adapters=served_adapters(),
        )
