"""`EngineBackend`: the engine as a `Backend`, whichever runner computes its steps.

`load()` loads the model (`load_model`, in a thread), builds its runner (`make_runner`),
then starts the continuous-batching scheduler (`gateway_engine.scheduler`) that owns both;
each `generate()` validates and tokenizes its request, fetches its LoRA adapters from the
resident pool (`gateway_engine.lora.pool`), queues a job and streams the chunks the
scheduler sends back through the event loop. Slots, tokenization, chat templates and
adapter checks answer from the same loaded model. Subclasses: the torch backend
(`gateway_torch.causal.TorchBackend`) and, through it, the onnx one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from gateway_schemas.canonical import (
    AdapterRef,
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    ToolDefinition,
)

from gateway.engine import Backend, Capability, ModelSpec
from gateway.engine.backend import SlotAction
from gateway.engine.stats import EngineStats
from gateway.errors import ContextExceeded, InvalidRequest, ModelNotReady, Unsupported
from gateway_engine.job import Item, Job
from gateway_engine.model import LanguageModel
from gateway_engine.runner import Runner


class EngineBackend(Backend):
    """A causal language model served by the shared engine. A subclass says how to load
    the model (`load_model`) and what computes its steps (`make_runner`)."""

    capabilities = frozenset(
        {Capability.GENERATE, Capability.CHAT, Capability.TOKENIZE, Capability.ADAPTERS}
    )

    def __init__(self, spec: ModelSpec, data_dir: Path):
        super().__init__(spec, data_dir)
        self._lm: Any = None  # the LanguageModel once loaded
        self._worker: Any = None  # gateway_engine.scheduler.Scheduler once loaded
        self._jobs: dict[int, Job] = {}
        self._grammars: Any = None  # gateway_engine.constraints.Grammars once loaded
        self._pool: Any = None  # gateway_engine.lora.pool.AdapterPool once loaded
        self._lora = False  # whether the runner applies adapters

    def load_model(self) -> LanguageModel:
        """Load the model of `self.spec` (blocking: called in a worker thread)."""
        raise NotImplementedError

    def make_runner(self, lm: Any) -> Runner:
        """The runner computing `lm`'s steps; called in a worker thread."""
        raise NotImplementedError

    def release(self) -> None:
        """Give memory back after an unload (blocking: called in a worker thread)."""

    async def load(self) -> None:
        from gateway_engine.constraints import Grammars
        from gateway_engine.lora.pool import AdapterPool
        from gateway_engine.lora.weights import read_adapter
        from gateway_engine.runner import warm_up
        from gateway_engine.scheduler import Scheduler

        lm = await asyncio.to_thread(self.load_model)
        runner = await asyncio.to_thread(self.make_runner, lm)
        await asyncio.to_thread(warm_up, runner)
        worker = Scheduler(
            lm, runner, prefill_chunk=lm.options.prefill_chunk, name=f"gateway-{self.spec.name}"
        )
        worker.start()
        self._grammars = Grammars(lm.tokenizer, lm.vocab_size, lm.eos_ids)
        self._pool = AdapterPool(
            lambda path, name, version: read_adapter(path, lm.model, name=name, version=version),
            lm.options.max_adapters,
        )
        self._lora = runner.lora
        self._lm, self._worker = lm, worker

    async def unload(self) -> None:
        worker, self._worker = self._worker, None
        for job in list(self._jobs.values()):
            job.abort()
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        # the pool's loader and the grammars hold the model and its tokenizer
        self._lm, self._pool, self._grammars = None, None, None
        self._jobs.clear()
        await asyncio.to_thread(self.release)

    def health(self) -> dict[str, Any]:
        from gateway_engine.scheduler import describe

        lm, worker = self._lm, self._worker
        if lm is None or worker is None:
            return {"loaded": False}
        return {
            "loaded": True,
            "device": str(lm.device),
            "dtype": str(lm.options.dtype).removeprefix("torch."),
            "context_length": lm.context_length,
            "vocab_size": lm.vocab_size,
            "runner": worker.runner_name,
            **describe(worker),
            "adapters_resident": [w.name for w in self._pool.resident()],
            "load_seconds": round(lm.load_seconds, 3),
            "weights": str(lm.folder),
        }

    def stats(self) -> EngineStats | None:
        worker, pool = self._worker, self._pool
        if worker is None:
            return None
        stats = worker.stats()
        return stats if pool is None else dataclasses.replace(stats, adapters_resident=len(pool))

    def slots(self) -> list[dict[str, Any]]:
        _, worker = self._running()
        return [
            {
                "id": state.id,
                "n_ctx": worker.context,
                "is_processing": state.busy,
                "cached_tokens": state.cached_tokens,
                "id_task": state.request_id,
            }
            for state in worker.slot_states()
        ]

    def _loaded(self) -> Any:
        return self._running()[0]

    def _running(self) -> tuple[Any, Any]:
        """The loaded model and its worker, or ModelNotReady."""
        lm, worker = self._lm, self._worker
        if lm is None or worker is None:
            raise ModelNotReady(f"Model `{self.spec.name}` is not loaded.")
        return lm, worker

    async def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        lm = self._loaded()
        return await asyncio.to_thread(
            lm.encoder.encode_text, text, add_special=add_special, parse_special=parse_special
        )

    def chat_template(self) -> str | None:
        template = getattr(self._loaded().tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None

    async def slot_action(self, slot: int, action: SlotAction, path: Path) -> dict[str, Any]:
        _, worker = self._running()
        actions = {
            "save": lambda: worker.save_slot(slot, path),
            "restore": lambda: worker.restore_slot(slot, path),
            "erase": lambda: worker.erase_slot(slot),
        }
        if action == "restore" and not path.is_file():
            raise InvalidRequest(f"No saved slot file `{path.name}`.", param="filename")
        return await asyncio.wrap_future(worker.control(actions[action]))

    async def detokenize(self, tokens: Sequence[int]) -> str:
        lm = self._loaded()
        lm.encoder.check_ids(tokens, "tokens")
        return await asyncio.to_thread(lm.encoder.decode, tokens)

    async def render_chat(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition] = ()
    ) -> str:
        lm = self._loaded()
        return await asyncio.to_thread(lm.encoder.render_chat, messages, tools)

    async def token_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        lm = self._loaded()
        lm.encoder.check_ids(tokens, "tokens")
        return [bytes(lm.pieces.piece(token)[1]) for token in tokens]

    def end_tokens(self) -> list[int]:
        return sorted(self._loaded().eos_ids)

    async def check_adapter(self, path: Path) -> dict[str, Any]:
        from gateway_engine.lora.weights import read_adapter

        lm = self._loaded()
        weights = await asyncio.to_thread(read_adapter, path, lm.model, device="cpu")
        return {"rank": weights.rank, "target_modules": weights.target_modules}

    def adapters_changed(self, name: str) -> None:
        if self._pool is not None:
            self._pool.forget(name)

    async def _adapter_set(self, refs: Sequence[AdapterRef]) -> tuple[Any, ...]:
        """The resident weights of each adapter of a request, with its scale."""
        if not refs:
            return ()
        if not self._lora:
            runner = self._worker.runner_name if self._worker else "generic"
            raise Unsupported(
                f"Model `{self.spec.name}` runs on the `{runner}` runner, which has no LoRA "
                "adapters (the torch backend's flat runner serves them for Llama-family "
                "models, and the onnx backend unless its option `lora` is false).",
                param="adapters",
            )
        chosen = []
        for ref in refs:
            path, version = await asyncio.to_thread(self.adapters.version, ref.name, "adapters")
            chosen.append((await self._pool.get(ref.name, version, path), ref.scale))
        return tuple(chosen)

    async def abort(self, request_id: str) -> None:
        for job in list(self._jobs.values()):
            if job.request_id == request_id:
                job.abort()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk]:
        lm, worker = self._running()
        adapters = await self._adapter_set(request.adapters or ())
        lm.encoder.check_ids(list(request.sampling.logit_bias), "logit_bias")
        prompt = await asyncio.to_thread(_prompt_ids, lm, request)
        room = lm.context_length - len(prompt)
        if room < 1:
            raise ContextExceeded(
                f"The prompt has {len(prompt)} tokens; the context holds "
                f"{lm.context_length}, which leaves no room to generate.",
                prompt_tokens=len(prompt),
                context=lm.context_length,
                param="prompt" if request.messages is None else "messages",
            )
        if request.slot is not None and not 0 <= request.slot < worker.slots:
            raise InvalidRequest(
                f"There is no slot {request.slot}; slots are 0 to {worker.slots - 1}.",
                param="id_slot",
            )
        limit = room if request.max_tokens is None else min(room, request.max_tokens)
        grammar = None
        if request.constraint is not None:
            grammar = await asyncio.to_thread(self._grammars.compile, request.constraint)
        breakers: frozenset[int] = frozenset()
        if request.sampling.dry_multiplier > 0 and request.sampling.dry_sequence_breakers:
            needles = tuple(sorted(request.sampling.dry_sequence_breakers))
            breakers = await asyncio.to_thread(lm.pieces.containing, needles, lm.vocab_size)
        queue: asyncio.Queue[Item] = asyncio.Queue()
        job = Job(
            request_id=request.id,
            prompt_ids=prompt,
            sampling=request.sampling,
            stop=list(request.stop),
            max_new_tokens=limit,
            ignore_eos=request.ignore_eos,
            top_logprobs=request.top_logprobs
            if (request.logprobs or request.top_logprobs > 0)
            else None,
            use_prompt_cache=request.cache_prompt,
            slot=request.slot,
            grammar=grammar,
            dry_breakers=breakers,
            time_limit=request.time_limit,
            post_sampling=request.post_sampling_probs,
            adapters=adapters,
            send=worker.outbox.sender(asyncio.get_running_loop(), queue),
        )
        key = id(job)
        self._jobs[key] = job
        try:
            worker.submit(job)
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.abort()  # a no-op once finished; stops the worker if the client left
            self._jobs.pop(key, None)


def _prompt_ids(lm: Any, request: GenerationRequest) -> list[int]:
    """The prompt's token ids: a rendered chat, a tokenized text, or ids checked as given."""
    if request.messages is not None:
        if not request.messages:
            raise InvalidRequest("`messages` is empty.", param="messages")
        ids = lm.encoder.encode_chat(request.messages, request.tools)
    elif isinstance(request.prompt, list):
        lm.encoder.check_ids(request.prompt, "prompt")
        ids = list(request.prompt)
    elif isinstance(request.prompt, str):
        ids = lm.encoder.encode_text(request.prompt, add_special=True)
    else:
        raise InvalidRequest("Either `messages` or `prompt` is required.", param="prompt")
    if not ids:
        raise InvalidRequest("The prompt is empty.", param="prompt")
    return ids
