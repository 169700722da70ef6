"""The contract every backend implements.

A backend serves one model. It is async-only: the host awaits it from the event loop and
the backend keeps heavy compute off that loop (a thread or a process of its own). What a
backend cannot do it refuses by raising `gateway.errors.Unsupported`.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from gateway_schemas.canonical import (
    ChatMessage,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    ToolDefinition,
)

from gateway.adapters.store import AdapterStore
from gateway.engine.memory import HostMemory, MemoryPool
from gateway.engine.stats import EngineStats
from gateway.errors import Unsupported

SlotAction = Literal["save", "restore", "erase"]


class Capability(enum.StrEnum):
    GENERATE = "generate"
    CHAT = "chat"
    EMBED = "embed"
    TOKENIZE = "tokenize"
    ADAPTERS = "adapters"
    """Serves LoRA adapters from its store, per request (`GenerationRequest.adapters`)."""


class ModelSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A model as configured: `[[models]]` in gateway.toml or `register_models` hooks."""

    name: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^\S+$")]
    backend: str
    source: str = ""
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    load: Literal["startup", "on_demand"] = "startup"
    """`startup`: loaded when the server starts; `on_demand`: registered, loaded by the
    first request naming it (or `POST /v1/models/load`)."""
    pin: bool = False
    """A pinned model is never evicted to make room for another (nor unloaded when idle)."""
    idle_timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Seconds without a request after which the model is unloaded (None: never)."""


class Backend(ABC):
    """One loaded (or loading) model behind one engine."""

    capabilities: frozenset[Capability] = frozenset()

    def __init__(self, spec: ModelSpec, data_dir: Path):
        self.spec = spec
        self.data_dir = data_dir
        self.adapters = AdapterStore.for_model(data_dir, spec.name)
        """The model's LoRA adapters (used by backends with `Capability.ADAPTERS`)."""

    @abstractmethod
    async def load(self) -> None:
        """Load weights. Called once, in the background, after the server accepts requests."""

    async def unload(self) -> None:
        """Release memory. The default does nothing."""

    def health(self) -> dict[str, Any]:
        """Diagnostics shown by /health once the model is ready."""
        return {}

    def memory_estimate(self) -> int | None:
        """Bytes the model is expected to take once loaded, before it ever was (the model
        manager uses the measured growth of its last load after that); None: unknown."""
        return None

    def memory_pool(self) -> MemoryPool:
        """Where the model's memory will live (the manager weighs its load against that
        pool's room). The default: the host's memory. Blocking calls are allowed: the
        manager asks from a thread, once."""
        return HostMemory()

    def stats(self) -> EngineStats | None:
        """What the model's engine has done since it loaded (`/metrics`); None for a
        backend without one (a proxy, an embedding model)."""
        return None

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk]:
        """Stream the chunks of one sequence; the last one has `finish_reason` and usage.

        Closing the iterator early (a client that went away) stops the generation.
        """
        raise Unsupported(f"Model `{self.spec.name}` does not generate text.", param="model")

    async def abort(self, request_id: str) -> None:
        """Stop a running generation; its stream ends with finish_reason `abort`."""

    async def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Token ids of `text`; `add_special` adds BOS/EOS as the model does, and
        `parse_special` reads special-token text (`<|im_start|>`) as those tokens."""
        raise Unsupported(f"Model `{self.spec.name}` has no tokenizer.", param="model")

    async def detokenize(self, tokens: Sequence[int]) -> str:
        raise Unsupported(f"Model `{self.spec.name}` has no tokenizer.", param="model")

    async def token_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        """The raw bytes of each token (a piece of a UTF-8 character stays a piece). The
        default encodes each token's text, which loses such pieces."""
        return [(await self.detokenize([token])).encode() for token in tokens]

    def end_tokens(self) -> list[int]:
        """The ids that end a generation (EOS, end of turn): what `ignore_eos` bans.
        Empty when the backend does not say."""
        return []

    async def render_chat(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition] = ()
    ) -> str:
        """The prompt text the model's own chat template makes of `messages`.

        `tools` (passed by keyword, and only when there are some) are functions the model
        may call. A template that shows tools in the Hermes `<tool_call>` format gets them
        and the messages' `tool_calls`/`tool_call_id`; for any other template a backend
        renders `gateway.engine.tools.as_plain_messages(messages, tools)` instead, which
        also writes earlier calls and results of the history as text.
        """
        raise Unsupported(f"Model `{self.spec.name}` has no chat template.", param="model")

    async def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        raise Unsupported(f"Model `{self.spec.name}` does not compute embeddings.", param="model")

    def chat_template(self) -> str | None:
        """The model's chat template source, if it has one (shown by /props)."""
        return None

    def slots(self) -> list[dict[str, Any]]:
        """Each parallel slot: `id`, `n_ctx`, `is_processing`, `cached_tokens`."""
        raise Unsupported(f"Model `{self.spec.name}` has no slots.", param="model")

    async def slot_action(self, slot: int, action: SlotAction, path: Path) -> dict[str, Any]:
        """Save a slot's prompt cache to `path`, restore it from there, or erase it."""
        raise Unsupported(f"Model `{self.spec.name}` cannot save or restore slots.")

    async def check_adapter(self, path: Path) -> dict[str, Any]:
        """Check that the PEFT adapter directory at `path` fits this model; a summary
        (`rank`, `target_modules`, ...) when it does, InvalidRequest saying what differs
        when it does not."""
        raise Unsupported(f"Model `{self.spec.name}` does not serve LoRA adapters.")

    async def merge_adapters(
        self,
        sources: Sequence[tuple[Path, float]],
        mode: Literal["weighted_average", "ties", "concat"],
        density: float | None,
        output: Path,
    ) -> int:
        """Merge the adapters at `sources` (directory, weight) into a new adapter directory
        `output`; the number of tensors written."""
        raise Unsupported(f"Model `{self.spec.name}` does not serve LoRA adapters.")

    def prices(self) -> tuple[float, float] | None:
        """What one prompt token and one completion token cost, in US dollars, when the
        backend's model is priced (a teacher proxy); None for a local model. Used to
        estimate a distillation job before it spends anything."""
        return None

    def adapters_changed(self, name: str) -> None:
        """`name` was deleted or replaced in the store: forget any resident copy."""


BackendFactory = Callable[[ModelSpec, Path], Backend]
"""What `register_backends` hands over: builds a Backend for one configured model."""
