"""The OpenAI routes again without `/v1`, as llama-server serves them.

They are the OpenAI family's handlers, with what llama-server adds on these routes:

- its sampler fields (`mirostat`, DRY, XTC, `top_n_sigma`, dynamic temperature,
  `repeat_penalty`/`repeat_last_n`, `samplers`) and `id_slot`, `cache_prompt`,
  `post_sampling_probs`, `t_max_predict_ms`, applied to the canonical requests the OpenAI
  translation builds (only the fields a body sets; the OpenAI defaults stay);
- `lora` (adapters by id, see `lora`), exclusive with Kiln's `adapter` / `adapters`, which
  these routes read as the `/v1` ones do;
- `verbose: true`: the native /completion answer of each choice in `__verbose` (on the
  answer, or on each choice's last event of a stream);
- `/embeddings` in llama-server's native format (`/v1/embeddings` stays OpenAI's).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import msgspec
from gateway_schemas.canonical import GenerationChunk, GenerationRequest
from gateway_schemas.llamacpp import BareChatRequest, BareCompletionRequest, EmbeddingRequest
from gateway_schemas.openai import ChatCompletionRequest
from litestar import Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream
from msgspec import UNSET

from gateway.engine import Backend, Capability
from gateway.errors import InvalidRequest
from gateway.gateway import Gateway
from gateway.routes.llamacpp import completion as cmpl
from gateway.routes.llamacpp import embeddings as emb
from gateway.routes.llamacpp import lora, params
from gateway.routes.llamacpp import translate as tr
from gateway.routes.llamacpp.controllers import _model, _n_ctx
from gateway.routes.openai.controllers import ERRORS, OpenAIController

EXTRA_FIELDS = tuple(
    name
    for name in BareChatRequest.__struct_fields__
    if name not in ChatCompletionRequest.__struct_fields__
)
"""llama-server's fields on its OpenAI routes."""
SAMPLING_FIELDS = {
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "dry_multiplier",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "xtc_probability",
    "xtc_threshold",
    "dynatemp_range",
    "dynatemp_exponent",
    "repeat_penalty",
}


def extras_of(body: msgspec.Struct) -> dict[str, Any]:
    """The llama-server fields a body sets."""
    return {
        name: getattr(body, name)
        for name in EXTRA_FIELDS
        if name != "verbose" and getattr(body, name) is not UNSET
    }


def apply_extras(request: GenerationRequest, extras: dict[str, Any]) -> GenerationRequest:
    """`request` with llama-server's fields of its body."""
    sampling = {k: v for k, v in extras.items() if k in SAMPLING_FIELDS}
    if "dry_base" in extras:
        base = extras["dry_base"]
        sampling["dry_base"] = base if base >= 1.0 else tr.DEFAULT_DRY_BASE
    if "top_n_sigma" in extras:
        sampling["top_n_sigma"] = max(extras["top_n_sigma"], 0.0)
    if "repeat_last_n" in extras:
        sampling["penalty_last_n"] = extras["repeat_last_n"]
    if "samplers" in extras:
        sampling["order"] = tr.sampler_order(extras["samplers"])
    changes: dict[str, Any] = {}
    if sampling:
        changes["sampling"] = msgspec.structs.replace(request.sampling, **sampling)
    if extras.get("id_slot", -1) >= 0:
        changes["slot"] = extras["id_slot"]
    if "cache_prompt" in extras:
        changes["cache_prompt"] = extras["cache_prompt"]
    if "post_sampling_probs" in extras:
        changes["post_sampling_probs"] = extras["post_sampling_probs"]
    if extras.get("t_max_predict_ms", 0) > 0:
        changes["time_limit"] = extras["t_max_predict_ms"] / 1000.0
    return msgspec.structs.replace(request, **changes) if changes else request


class Recorder:
    """The generation service as one un-prefixed request sees it: llama-server's fields
    applied to every canonical request, and what each sequence produced kept for
    `__verbose`."""

    def __init__(self, gateway: Gateway, extras: dict[str, Any]):
        self._gateway = gateway
        self._service = gateway.generation
        self._extras = extras
        self.requests: list[GenerationRequest] = []
        self.outputs: list[cmpl.Output] = []

    def _with_lora(self, request: GenerationRequest) -> GenerationRequest:
        """`request` with the adapters of the body's `lora` (when it has one)."""
        entries = self._extras.get("lora")
        if entries is None:
            return request
        backend = self._gateway.models.get(request.model)
        return msgspec.structs.replace(request, adapters=lora.refs(backend, entries))

    def _prepare(self, requests: Sequence[GenerationRequest]) -> list[GenerationRequest]:
        self.requests = [self._with_lora(apply_extras(r, self._extras)) for r in requests]
        self.outputs = [cmpl.Output(r, []) for r in self.requests]
        return self.requests

    async def complete_many(self, requests: Sequence[GenerationRequest]) -> list[Any]:
        results = await self._service.complete_many(self._prepare(requests))
        for output, result in zip(self.outputs, results, strict=True):
            output.text, output.tokens, output.logprobs = (
                result.text,
                result.token_ids,
                result.logprobs,
            )
            output.final = result.final
        return list(results)

    def stream_many(
        self, requests: Sequence[GenerationRequest]
    ) -> AsyncGenerator[tuple[int, GenerationChunk]]:
        return self._stream(self._prepare(requests))

    async def _stream(
        self, requests: list[GenerationRequest]
    ) -> AsyncGenerator[tuple[int, GenerationChunk]]:
        async with contextlib.aclosing(self._service.stream_many(requests)) as chunks:
            async for index, chunk in chunks:
                output = self.outputs[index]
                output.text += chunk.text
                output.tokens += chunk.token_ids
                output.logprobs += chunk.logprobs
                if chunk.finish_reason is not None:
                    output.final = chunk
                yield index, chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)


class GatewayView:
    """The gateway with its generation service seen through a `Recorder`."""

    def __init__(self, gateway: Gateway, recorder: Recorder):
        self._gateway = gateway
        self.generation = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)


async def verbose_answers(
    gateway: Gateway, recorder: Recorder, model: str, *, stream: bool
) -> list[dict[str, Any]]:
    """The native answer of each sequence the request ran (llama-server's `__verbose`)."""
    backend = gateway.models.get(model)
    n_ctx = _n_ctx(backend)
    answers = []
    for index, (request, output) in enumerate(
        zip(recorder.requests, recorder.outputs, strict=True)
    ):
        body = params.native_body(request, stream=stream)
        bias = list(request.sampling.logit_bias.items())
        settings = params.generation_settings(
            body,
            gateway.settings.llamacpp,
            bias=bias,
            end_tokens=backend.end_tokens(),
            n_ctx=n_ctx,
            model=model,
        )
        settings["lora"] = lora.served_ids(backend)
        run = cmpl.Run(body, model, settings, n_ctx, [[]], [await _prompt_text(backend, request)])
        answers.append(cmpl.final_body(run, 0, output, streamed=False) | {"index": index})
    return answers


async def _prompt_text(backend: Backend, request: GenerationRequest) -> str:
    if request.messages is not None:
        return await backend.render_chat(request.messages)
    if isinstance(request.prompt, list):
        return await backend.detokenize(request.prompt)
    return request.prompt or ""


async def _with_verbose(
    events: AsyncIterator[bytes], gateway: Gateway, recorder: Recorder, model: str
) -> AsyncIterator[bytes]:
    """A stream whose event ending each choice carries that choice's `__verbose`."""
    async for event in events:
        if not event.startswith(b"data: {"):
            yield event
            continue
        payload = json.loads(event[len(b"data: ") :])
        ended = [c["index"] for c in payload.get("choices", []) if c.get("finish_reason")]
        if ended:
            answers = await verbose_answers(gateway, recorder, model, stream=True)
            payload["__verbose"] = answers[ended[0]]
            event = b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"
        yield event


async def _verbose_response(
    response: Response[Any], gateway: Gateway, recorder: Recorder
) -> Response[Any]:
    if not recorder.requests:
        return response
    model = recorder.requests[0].model
    if isinstance(response, Stream):
        return Stream(
            _with_verbose(response.iterator, gateway, recorder, model),  # type: ignore[arg-type]
            media_type=response.media_type,
            headers=dict(response.headers),
        )
    body = msgspec.to_builtins(response.content)
    answers = await verbose_answers(gateway, recorder, model, stream=False)
    return Response(body | {"__verbose": answers[0]}, status_code=response.status_code)


class BareOpenAIController(OpenAIController):
    """/chat/completions, /completions, /embeddings, /models: no `/v1`."""

    path = "/"

    @post("/chat/completions", status_code=200, responses=ERRORS)
    async def chat_completions(
        self,
        data: JSONBody[BareChatRequest],
        gateway: NamedDependency[Gateway],
    ) -> Response[Any]:
        return await _with_extras(self, OpenAIController.chat_completions.fn, data, gateway)

    @post("/completions", status_code=200, responses=ERRORS)
    async def completions(
        self,
        data: JSONBody[BareCompletionRequest],
        gateway: NamedDependency[Gateway],
    ) -> Response[Any]:
        return await _with_extras(self, OpenAIController.completions.fn, data, gateway)

    @post("/embeddings", status_code=200, responses=ERRORS)
    async def embeddings(
        self, data: JSONBody[EmbeddingRequest], gateway: NamedDependency[Gateway]
    ) -> list[dict[str, Any]]:
        """llama-server's native embeddings: `[{"index", "embedding": [[...]]}]`."""
        backend = gateway.models.get(_model(gateway, data.model, Capability.EMBED))
        return await emb.native_embeddings(backend, data)


async def _with_extras(
    controller: Any,
    handler: Any,
    data: BareChatRequest | BareCompletionRequest,
    gateway: Gateway,
) -> Response[Any]:
    """The OpenAI handler on a view of the gateway whose generations carry llama-server's
    extras; with `verbose`, each choice's native answer added as `__verbose`."""
    if data.lora is not None and (data.adapter is not UNSET or data.adapters is not None):
        raise InvalidRequest(
            "Give either `lora` or `adapter` / `adapters`, not both.", param="lora"
        )
    recorder = Recorder(gateway, extras_of(data))
    view: Any = GatewayView(gateway, recorder)
    response: Response[Any] = await handler(controller, data=data, gateway=view)
    if not data.verbose:
        return response
    return await _verbose_response(response, gateway, recorder)
