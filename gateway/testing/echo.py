"""EchoBackend: a deterministic backend with no model.

It answers with the last user message (chat) or the prompt (text), one UTF-8 byte per
token, so every dialect's wire format can be tested exactly. Its chat prompt is one
`role: content` line per message, tools and tool calls written as `as_plain_messages` writes
them for templates without tool support. It is also the smallest complete example of a backend.

Options (`[[models]] options = {...}`): `delay` seconds between tokens, `load_delay`
seconds spent in `load()`, `dimensions` of its embeddings (default 8), `adapters = true`
to declare `Capability.ADAPTERS` (it then accepts any stored adapter and ignores it: enough
to test the adapter store, training jobs and their routes without a model).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from gateway_schemas.canonical import (
    ChatMessage,
    EmbeddingResult,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    Timings,
    TokenLogprob,
    ToolDefinition,
    TopLogprob,
    Usage,
)

from gateway.engine import Backend, Capability
from gateway.engine.backend import SlotAction
from gateway.engine.stops import StopMatcher
from gateway.engine.tools import as_plain_messages
from gateway.errors import InvalidRequest, Unsupported

VOCAB_SIZE = 256


class EchoBackend(Backend):
    capabilities = frozenset(
        {Capability.GENERATE, Capability.CHAT, Capability.TOKENIZE, Capability.EMBED}
    )

    def __init__(self, spec: Any, data_dir: Any):
        super().__init__(spec, data_dir)
        if spec.options.get("adapters"):
            self.capabilities = type(self).capabilities | {Capability.ADAPTERS}
        self._aborted: set[str] = set()
        self.active: set[str] = set()
        self.served = 0
        self._slot_ids: dict[int, list[int]] = {}
        self._busy_slots: set[int] = set()

    async def check_adapter(self, path: Path) -> dict[str, Any]:
        """With `adapters = true`: any PEFT directory fits (nothing is computed with it)."""
        if Capability.ADAPTERS not in self.capabilities:
            return await super().check_adapter(path)
        config = json.loads((path / "adapter_config.json").read_text())
        return {"rank": config.get("r"), "target_modules": config.get("target_modules")}

    async def load(self) -> None:
        await asyncio.sleep(float(self.spec.options.get("load_delay", 0)))

    def health(self) -> dict[str, Any]:
        return {"active": len(self.active), "served": self.served}

    async def render_chat(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition] = ()
    ) -> str:
        plain = as_plain_messages(messages, tools)
        return "".join(f"{m.role}: {m.content}\n" for m in plain) + "assistant:"

    async def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return list(text.encode("utf-8"))

    async def detokenize(self, tokens: Sequence[int]) -> str:
        bad = [t for t in tokens if not 0 <= t < VOCAB_SIZE]
        if bad:
            raise InvalidRequest(f"Token id {bad[0]} is out of range [0, {VOCAB_SIZE}).")
        return bytes(tokens).decode("utf-8", errors="replace")

    async def token_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        await self.detokenize(tokens)  # the range check
        return [bytes([token]) for token in tokens]

    async def _prompt(self, request: GenerationRequest) -> tuple[list[int], str]:
        if request.messages is not None:
            users = [m.content for m in request.messages if m.role == "user"]
            rendered = await (
                self.render_chat(request.messages, tools=request.tools)
                if request.tools
                else self.render_chat(request.messages)  # subclasses may not take tools
            )
            return await self.tokenize(rendered), users[-1] if users else ""
        if isinstance(request.prompt, list):
            text = await self.detokenize(request.prompt)
            return list(request.prompt), text
        text = request.prompt or ""
        return await self.tokenize(text), text

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk]:
        if request.adapters and Capability.ADAPTERS not in self.capabilities:
            raise Unsupported("The echo backend has no LoRA adapters.", param="adapters")
        bad = [t for t in request.sampling.logit_bias if not 0 <= t < VOCAB_SIZE]
        if bad:
            raise InvalidRequest(
                f"Token id {bad[0]} in `logit_bias` is out of range.", param="logit_bias"
            )
        prompt_ids, reply = await self._prompt(request)
        if request.slot is not None:
            self._slot_ids[request.slot] = list(prompt_ids)
        started = time.perf_counter()
        delay = float(self.spec.options.get("delay", 0))
        stops = StopMatcher(request.stop)
        limit = len(reply.encode()) if request.max_tokens is None else request.max_tokens
        produced: list[int] = []
        finish: FinishReason = "stop"
        self.active.add(request.id)
        if request.slot is not None:
            self._busy_slots.add(request.slot)
        try:
            for token in reply.encode("utf-8"):
                if len(produced) >= limit:
                    finish = "length"
                    break
                if request.id in self._aborted:
                    finish = "abort"
                    break
                if delay:
                    await asyncio.sleep(delay)
                produced.append(token)
                text = stops.feed(bytes([token]).decode("utf-8", errors="replace"))
                if text or request.logprobs:
                    yield GenerationChunk(
                        text=text, token_ids=[token], logprobs=self._logprobs(token, request)
                    )
                if stops.matched is not None:
                    break
            tail = stops.flush()
            if tail:
                yield GenerationChunk(text=tail)
            elapsed = (time.perf_counter() - started) * 1000
            yield GenerationChunk(
                finish_reason=finish,
                stop_word=stops.matched,
                usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(produced)),
                timings=Timings(
                    prompt_n=len(prompt_ids),
                    prompt_ms=0.0,
                    predicted_n=len(produced),
                    predicted_ms=elapsed,
                ),
            )
            self.served += 1
        finally:
            self.active.discard(request.id)
            self._busy_slots.discard(request.slot if request.slot is not None else -1)
            self._aborted.discard(request.id)

    async def abort(self, request_id: str) -> None:
        if request_id in self.active:
            self._aborted.add(request_id)

    def _logprobs(self, token: int, request: GenerationRequest) -> list[TokenLogprob]:
        if not (request.logprobs or request.top_logprobs):
            return []
        piece = bytes([token]).decode("utf-8", errors="replace")
        top = [
            TopLogprob(
                token=bytes([(token + k) % VOCAB_SIZE]).decode("utf-8", errors="replace"),
                token_id=(token + k) % VOCAB_SIZE,
                logprob=-0.5 * k - 0.1,
                bytes=[(token + k) % VOCAB_SIZE],
            )
            for k in range(request.top_logprobs)
        ]
        return [TokenLogprob(token=piece, token_id=token, logprob=-0.1, bytes=[token], top=top)]

    async def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        dims = int(self.spec.options.get("dimensions", 8))
        vectors = []
        for text in texts:
            raw = [0.0] * dims
            for i in range(max(len(text) - 2, 1)):
                digest = hashlib.sha256(text[i : i + 3].encode()).digest()
                raw[digest[0] % dims] += 1.0 if digest[1] % 2 else -1.0
            norm = math.sqrt(sum(x * x for x in raw)) or 1.0
            vectors.append([x / norm for x in raw])
        tokens = sum(len(t.encode()) for t in texts)
        return EmbeddingResult(vectors=vectors, prompt_tokens=tokens)

    # Slots: `options.slots` (default 2) of `n_ctx` 4096; a slot "caches" the prompt ids
    # of the last generation that asked for it.

    def slots(self) -> list[dict[str, Any]]:
        count = int(self.spec.options.get("slots", 2))
        return [
            {
                "id": slot,
                "n_ctx": 4096,
                "is_processing": slot in self._busy_slots,
                "cached_tokens": len(self._slot_ids.get(slot, [])),
                "id_task": None,
            }
            for slot in range(count)
        ]

    async def slot_action(self, slot: int, action: SlotAction, path: Path) -> dict[str, Any]:
        if not 0 <= slot < len(self.slots()):
            raise InvalidRequest(f"There is no slot {slot}.")
        ids = self._slot_ids.get(slot, [])
        if action == "erase":
            self._slot_ids[slot] = []
            return {"n_erased": len(ids)}
        if action == "save":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(ids))
            return {"n_saved": len(ids), "n_written": path.stat().st_size}
        if not path.is_file():
            raise InvalidRequest(f"No saved slot file `{path.name}`.", param="filename")
        self._slot_ids[slot] = json.loads(path.read_text())
        return {"n_restored": len(self._slot_ids[slot]), "n_read": path.stat().st_size}
