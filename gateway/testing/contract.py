"""`BackendContract`: the tests every backend must pass, for a plugin's own test suite.

Subclass it in a test module, name the backend and the model it serves, and pytest runs
the whole contract against it, found the way the server finds it (the `gateway` entry
points). It uses the fixtures of `gateway.testing.fixtures` (`pytest_plugins =
["gateway.testing.fixtures"]` in a `conftest.py`):

```python
from gateway.testing.contract import BackendContract


class TestMyBackend(BackendContract):
    backend = "my-backend"      # the name the plugin registers
    source = "my-weights"       # `[[models]] source`, when the backend reads one
    options = {"threads": 1}    # `[[models]] options`
```

What it checks, for each capability the backend declares: it loads and says so in
`health()`; a generation streams text and ends with one chunk that has `finish_reason` and
`usage`; `max_tokens` bounds it; closing the stream early stops it cleanly; a chat renders
and generates; text tokenizes and detokenizes back; an aborted generation ends; it unloads.
Then the same backend behind the server: OpenAI's chat route answers, streamed and not.
A backend that does not generate (an embedding model) gets the embedding checks instead.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, ClassVar

import pytest
from gateway_schemas.canonical import (
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
)

from gateway.engine import Backend, Capability

ASYNC = pytest.mark.asyncio(loop_scope="session")
"""The contract's coroutine tests share the loaded backend's event loop."""
PROMPT = "The quick brown fox"
QUESTION = "Say hello."


def request(backend: Backend, **fields: Any) -> GenerationRequest:
    base: dict[str, Any] = {
        "id": f"contract-{uuid.uuid4().hex[:8]}",
        "model": backend.spec.name,
        "sampling": SamplingParams(temperature=0.0),
        "max_tokens": 8,
        "adapters": [],
    }
    if "messages" not in fields:
        base["prompt"] = PROMPT
    return GenerationRequest(**{**base, **fields})


async def collect(backend: Backend, req: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in backend.generate(req)]


class BackendContract:
    """The contract; see the module docstring. Class attributes say what to test."""

    backend: ClassVar[str]
    """The backend's registered name."""
    source: ClassVar[str | None] = None
    options: ClassVar[dict[str, Any]] = {}
    model_name: ClassVar[str] = "contract-model"
    load_timeout: ClassVar[float] = 600.0

    def needs(self, backend: Backend, capability: Capability) -> None:
        if capability not in backend.capabilities:
            pytest.skip(f"the backend does not declare {capability.name}")

    # -- the backend itself ----------------------------------------------------------

    @ASYNC
    async def test_declares_what_it_can_do_and_reports_health(
        self, contract_backend: Backend
    ) -> None:
        assert contract_backend.capabilities, "a backend declares at least one Capability"
        health = contract_backend.health()
        assert isinstance(health, dict)

    @ASYNC
    async def test_a_generation_streams_and_ends_with_finish_reason_and_usage(
        self, contract_backend: Backend
    ) -> None:
        self.needs(contract_backend, Capability.GENERATE)
        chunks = await collect(contract_backend, request(contract_backend))
        assert chunks, "generate() yielded nothing"
        *body, last = chunks
        assert all(chunk.finish_reason is None for chunk in body), "finish_reason before the end"
        assert last.finish_reason is not None, "the last chunk has no finish_reason"
        assert last.usage is not None, "the last chunk has no usage"
        assert last.usage.prompt_tokens > 0
        text = "".join(chunk.text for chunk in chunks)
        assert last.usage.completion_tokens > 0 and text, "nothing was generated"

    @ASYNC
    async def test_max_tokens_bounds_the_generation(self, contract_backend: Backend) -> None:
        self.needs(contract_backend, Capability.GENERATE)
        chunks = await collect(
            contract_backend, request(contract_backend, max_tokens=3, ignore_eos=True)
        )
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens <= 3
        assert chunks[-1].finish_reason == "length"

    @ASYNC
    async def test_closing_the_stream_early_stops_it(self, contract_backend: Backend) -> None:
        self.needs(contract_backend, Capability.GENERATE)
        stream = contract_backend.generate(
            request(contract_backend, max_tokens=64, ignore_eos=True)
        )
        await anext(stream)
        await stream.aclose()  # a client that went away: no error, nothing left running
        chunks = await collect(
            contract_backend, request(contract_backend)
        )  # and the backend still serves
        assert chunks[-1].finish_reason is not None

    @ASYNC
    async def test_abort_ends_a_generation(self, contract_backend: Backend) -> None:
        self.needs(contract_backend, Capability.GENERATE)
        req = request(contract_backend, max_tokens=10_000, ignore_eos=True)
        chunks: list[GenerationChunk] = []

        async def run() -> None:
            async for chunk in contract_backend.generate(req):
                chunks.append(chunk)
                if len(chunks) == 2:
                    await contract_backend.abort(req.id)

        await asyncio.wait_for(run(), 120)
        assert chunks and chunks[-1].finish_reason is not None

    @ASYNC
    async def test_a_chat_renders_and_generates(self, contract_backend: Backend) -> None:
        self.needs(contract_backend, Capability.CHAT)
        messages = [ChatMessage(role="user", content=QUESTION)]
        prompt = await contract_backend.render_chat(messages)
        assert QUESTION in prompt, "the chat prompt lost the user's message"
        chunks = await collect(contract_backend, request(contract_backend, messages=messages))
        assert chunks[-1].finish_reason is not None and chunks[-1].usage is not None

    @ASYNC
    async def test_text_tokenizes_and_detokenizes_back(self, contract_backend: Backend) -> None:
        self.needs(contract_backend, Capability.TOKENIZE)
        ids = await contract_backend.tokenize(PROMPT, add_special=False)
        assert ids and all(isinstance(i, int) for i in ids)
        assert (await contract_backend.detokenize(ids)).strip() == PROMPT

    @ASYNC
    async def test_embeddings_have_one_vector_per_input(self, contract_backend: Backend) -> None:
        self.needs(contract_backend, Capability.EMBED)
        result = await contract_backend.embed(["one", "two words"])
        assert len(result.vectors) == 2 and result.prompt_tokens > 0
        assert len(result.vectors[0]) == len(result.vectors[1]) > 0

    # -- behind the server -----------------------------------------------------------

    def test_the_server_serves_it_in_openais_dialect(self, contract_client: Any) -> None:
        listing = contract_client.get("/v1/models").json()
        assert self.model_name in [m["id"] for m in listing["data"]]
        health = contract_client.get("/health").json()
        capabilities = {m["name"]: m for m in health["models"]}
        assert capabilities[self.model_name]["state"] == "ready"

    def test_the_chat_route_answers_and_streams(
        self, contract_client: Any, contract_backend: Backend
    ) -> None:
        self.needs(contract_backend, Capability.CHAT)
        body = {
            "model": self.model_name,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 8,
            "temperature": 0,
        }
        reply = contract_client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        assert choice["finish_reason"] in ("stop", "length")
        with contract_client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}
        ) as s:
            assert s.status_code == 200
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and len(lines) >= 2
