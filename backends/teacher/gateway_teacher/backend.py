"""`TeacherBackend`: a model served by OpenAI-compatible upstreams.

It depends on nothing but its spec and settings, so a training worker builds it the same
way the server does (`teacher_factory(settings)(spec, data_dir)`, then `load()` and
`generate()`, all in one event loop; `unload()` closes its HTTP client).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
from gateway_schemas.canonical import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
)

from gateway.engine import Backend, Capability, ModelSpec
from gateway.errors import InvalidRequest
from gateway_teacher.affinity import prefix_key
from gateway_teacher.client import UpstreamClient
from gateway_teacher.failures import UpstreamProblem
from gateway_teacher.prices import PriceTable
from gateway_teacher.router import Cooldowns, Router
from gateway_teacher.settings import TeacherOptions, TeacherSettings
from gateway_teacher.targets import Target, resolve_groups
from gateway_teacher.transform import (
    StreamDecoder,
    UpstreamStreamError,
    check_supported,
    upstream_request,
)


class TeacherBackend(Backend):
    """Generations forwarded to the model's upstreams, streamed through chunk by chunk.

    Its tokenizer is the lossless one of UTF-8 bytes (one id per byte), so the routes that
    work in token ids (llama.cpp's `/completion`, Kobold's generate) carry their prompt
    text through it; those ids are not the upstream model's and count nothing.
    """

    capabilities = frozenset({Capability.GENERATE, Capability.CHAT})

    def __init__(
        self,
        spec: ModelSpec,
        data_dir: Path,
        settings: TeacherSettings | None = None,
        *,
        cooldowns: Cooldowns | None = None,
        environ: Mapping[str, str] | None = None,
    ):
        super().__init__(spec, data_dir)
        self.settings = settings or TeacherSettings()
        groups = resolve_groups(spec, self.settings, os.environ if environ is None else environ)
        self.options = msgspec.convert(spec.options, TeacherOptions, strict=False)
        self.router = Router(
            groups,
            cooldowns or Cooldowns(),
            num_retries=self.settings.num_retries,
            cooldown_seconds=self.settings.cooldown_seconds,
            max_fallbacks=self.settings.max_fallbacks,
            backoff_seconds=self.settings.backoff_seconds,
            balance=self.options.affinity_balance,
        )
        self.price_table = PriceTable(self.settings.prices)
        self.client = UpstreamClient(
            self.settings.max_connections, trust_env=self.settings.trust_env
        )
        self.accepted = frozenset.intersection(*(t.extra_params for t in self.router.targets))
        """Extra fields every upstream of the model accepts: only these are forwarded."""
        self.system_prompt = self.options.system_prompt
        self._aborted: set[str] = set()
        self._active: set[str] = set()
        self.served = 0
        self.failed = 0

    async def load(self) -> None:
        await self.client.open()

    async def unload(self) -> None:
        await self.client.close()

    def health(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "upstreams": [[t.id for t in g.targets] for g in self.router.groups],
            "routing": self.options.routing,
            "cooling": self.router.cooldowns.remaining(),
            "active": len(self._active),
            "served": self.served,
            "failed": self.failed,
        }
        if self.options.routing == "prefix_affinity":
            found["in_flight"] = dict(self.router.load)
        return found

    def prices(self) -> tuple[float, float] | None:
        """USD per prompt token and per completion token of the model's first upstream."""
        first = self.router.targets[0]
        return self.price_table.per_token(first.provider, first.model)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk]:
        key = None
        if self.options.routing == "prefix_affinity":
            # The caller's prompt: the model's own system prompt starts every prompt alike.
            key = prefix_key(request, self.options.affinity_prefix)
        if self.system_prompt and request.messages is not None:
            request = msgspec.structs.replace(
                request, messages=with_system(request.messages, self.system_prompt)
            )
        if not self.settings.drop_unsupported:
            check_supported(request, self.accepted, self.spec.name)
        self._active.add(request.id)
        try:
            _, stream, first = await self.router.open(lambda t: self._attempt(t, request), key)
            try:
                yield first
                async for chunk in stream:
                    yield chunk
            except UpstreamProblem as problem:  # after the first chunk: no retry
                raise problem.error() from None
            finally:
                await stream.aclose()
            self.served += 1
        except Exception:
            self.failed += 1
            raise
        finally:
            self._active.discard(request.id)
            self._aborted.discard(request.id)

    async def _attempt(
        self, target: Target, request: GenerationRequest
    ) -> AsyncGenerator[GenerationChunk]:
        """One upstream call: its text chunks as they come, then the closing chunks."""
        path, body = upstream_request(
            request, target.model, self.accepted, max_tokens_field=target.max_tokens_field
        )
        decoder = StreamDecoder(request.stop)
        deadline: float | None = None
        reason: FinishReason | None = None
        async with contextlib.aclosing(self.client.events(target, path, body)) as events:
            async for event in events:
                try:
                    chunk = decoder.feed(event)
                except UpstreamStreamError as exc:
                    raise UpstreamProblem(target.id, "stream", str(exc)) from None
                if request.id in self._aborted:
                    reason = "abort"
                    break
                if chunk is None:
                    continue
                yield chunk
                if request.time_limit is not None:
                    now = time.monotonic()
                    deadline = deadline or now + request.time_limit
                    if now >= deadline:
                        reason = "length"
                        break
        if reason is None and not decoder.finished:
            raise UpstreamProblem(target.id, "stream", "the stream ended without a finish reason")
        per_token = self.price_table.per_token(target.provider, target.model)
        for chunk in decoder.finish(per_token, reason=reason):
            yield chunk

    async def abort(self, request_id: str) -> None:
        if request_id in self._active:
            self._aborted.add(request_id)

    async def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return list(text.encode("utf-8"))

    async def detokenize(self, tokens: Sequence[int]) -> str:
        bad = [t for t in tokens if not 0 <= t < 256]
        if bad:
            raise InvalidRequest(
                f"Token id {bad[0]} is not a byte: a teacher model's token ids are UTF-8 bytes."
            )
        return bytes(tokens).decode("utf-8", errors="replace")

    async def token_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        await self.detokenize(tokens)
        return [bytes([token]) for token in tokens]


def with_system(messages: Sequence[ChatMessage], instructions: str) -> list[ChatMessage]:
    """`messages` with `instructions` first: joined before the text of a leading system
    message, else as a system message of their own."""
    if messages and messages[0].role == "system":
        first = msgspec.structs.replace(
            messages[0], content=f"{instructions}\n\n{messages[0].content}"
        )
        return [first, *messages[1:]]
    return [ChatMessage(role="system", content=instructions), *messages]
