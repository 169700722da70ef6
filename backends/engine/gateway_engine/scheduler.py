"""Continuous batching: the one thread that owns a causal model and steps every sequence.

Each step the scheduler

1. admits waiting jobs into free slots, choosing the slot whose cached tokens share the
   longest prefix with the prompt (the prompt cache), among those where that prefix is at
   least `SLOT_PROMPT_SIMILARITY` of what the slot holds, and otherwise an empty or the
   least recently used one;
2. plans one batch: a one-token decode for every sequence that is generating, and prefill
   chunks for sequences still reading their prompt, at most `prefill_chunk` prompt tokens
   per step in all, so that a long prompt never stalls everyone's decode for long. A
   prompt's last token runs as a one-token work in the step after its prefill, which is
   what a cached prompt leaves to compute too: the prompt cache never changes an answer;
3. runs it through the runner in one forward pass, samples the next token of every
   sequence that asked for logits (each with its own parameters and RNG), and streams
   chunks out;
4. retires finished, stopped and aborted sequences: their slot keeps its cached tokens
   for the next prompt that starts the same way *under the same adapters* (a prefix
   computed with other LoRA weights is never reused).

Nothing here runs on the event loop; jobs come in through `submit()` and their chunks go
back through each job's thread-safe `send`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from gateway_schemas.canonical import (
    FinishReason,
    GenerationChunk,
    Timings,
    TokenLogprob,
    Usage,
)

from gateway.engine.stats import EngineStats
from gateway.errors import BackendFailure, GatewayError, InvalidRequest
from gateway_engine.job import AdapterKey, ChunkEmitter, Job, Outbox
from gateway_engine.logprobs import post_sampling_logprob, token_logprob
from gateway_engine.model import LanguageModel
from gateway_engine.runner import Runner, Work
from gateway_engine.sampling import make_generator, sample, transform
from gateway_engine.sampling_extra import RowState

log = logging.getLogger(__name__)

SLOT_PROMPT_SIMILARITY = 0.1
"""A free slot is reused for its cached tokens only when the new prompt shares at least
this share of what the slot holds (llama-server's `--slot-prompt-similarity`, same
default); otherwise the prompt goes to an empty or the least recently used slot, so a
prompt that shares only a chat template's opening does not evict a long cached prompt
another slot could have taken."""


@dataclass
class _Sequence:
    """A job admitted into a slot."""

    job: Job
    slot: int
    ids: list[int]
    """Prompt, then every sampled token."""
    cached: int
    """How many of `ids` the slot's KV cache holds."""
    reused: int
    emitter: ChunkEmitter
    generator: torch.Generator
    admitted: float
    prompt_done: float | None = None
    completion: int = 0
    state: RowState = field(default_factory=RowState)
    prompt_length: int = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_length = len(self.ids)


@dataclass
class SlotState:
    """What `/slots`-style diagnostics show about one slot."""

    id: int
    busy: bool
    cached_tokens: int
    request_id: str | None


class Scheduler:
    """Owns `runner` on a private thread and runs every admitted sequence in lock-step."""

    def __init__(
        self,
        lm: LanguageModel,
        runner: Runner,
        *,
        prefill_chunk: int = 256,
        name: str = "gateway-torch",
    ):
        self._lm, self._runner = lm, runner
        self.prefill_chunk = prefill_chunk
        self._waiting: deque[Job] = deque()
        self._controls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.outbox = Outbox()
        """Where jobs' chunks wait for the end of the step (`Job.send` puts them there)."""
        self._active: list[_Sequence] = []
        self._slot_ids: list[list[int]] = [[] for _ in range(runner.slots)]
        self._slot_adapters: list[AdapterKey] = [() for _ in range(runner.slots)]
        self._slot_used: list[int] = [0] * runner.slots
        self._owner: list[_Sequence | None] = [None] * runner.slots
        self._clock = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.served = 0
        self.steps = 0
        # Counted on the scheduler thread, read by `stats` (a scrape) from any thread.
        self._prompt_tokens = self._predicted_tokens = self._busy = self._tokens_max = 0
        self._prompt_seconds = self._predicted_seconds = 0.0

    @property
    def runner_name(self) -> str:
        return self._runner.name

    @property
    def slots(self) -> int:
        return self._runner.slots

    @property
    def context(self) -> int:
        return self._runner.context

    @property
    def queued(self) -> int:
        """Jobs waiting for a slot."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Sequences in a slot now."""
        return len(self._active)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> EngineStats:
        states = self.slot_states()
        return EngineStats(
            prompt_tokens=self._prompt_tokens,
            prompt_seconds=self._prompt_seconds,
            predicted_tokens=self._predicted_tokens,
            predicted_seconds=self._predicted_seconds,
            decode_calls=self.steps,
            busy_slots=self._busy,
            tokens_max=self._tokens_max,
            processing=self.active,
            deferred=self.queued,
            slots=self.slots,
            cached_tokens=sum(state.cached_tokens for state in states),
            cache_capacity=self.slots * self.context,
        )

    def slot_states(self) -> list[SlotState]:
        owners = list(self._owner)
        return [
            SlotState(
                id=slot,
                busy=owner is not None,
                cached_tokens=len(self._slot_ids[slot]) if owner is None else owner.cached,
                request_id=owner.job.request_id if owner is not None else None,
            )
            for slot, owner in enumerate(owners)
        ]

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        if job.slot is not None and not 0 <= job.slot < self.slots:
            raise BackendFailure(f"No slot {job.slot}: there are {self.slots}.")
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise BackendFailure("The model's scheduler is not running.")
            self._waiting.append(job)
            self._cond.notify()

    def control(self, action: Callable[[], Any]) -> Future[Any]:
        """Run `action` on the scheduler thread between two steps (slot save, restore...)."""
        future: Future[Any] = Future()
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise BackendFailure("The model's scheduler is not running.")
            self._controls.append((action, future))
            self._cond.notify()
        return future

    def save_slot(self, slot: int, path: Path) -> dict[str, Any]:
        """Write `slot`'s cached tokens and their KV cache to `path` (scheduler thread)."""
        self._idle_slot(slot)
        ids = list(self._slot_ids[slot])
        state = self._runner.export_slot(slot, len(ids))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        saved = {
            "tokens": ids,
            "state": state,
            "runner": self._runner.name,
            "adapters": [list(entry) for entry in self._slot_adapters[slot]],
        }
        torch.save(saved, partial)
        partial.replace(path)
        return {"n_saved": len(ids), "n_written": path.stat().st_size}

    def restore_slot(self, slot: int, path: Path) -> dict[str, Any]:
        """Load a file written by `save_slot` into `slot` (scheduler thread)."""
        self._idle_slot(slot)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("runner") != self._runner.name:
            raise InvalidRequest("The slot file was saved by a different engine.")
        try:
            length = self._runner.import_slot(slot, saved["state"])
        except (ValueError, RuntimeError) as exc:
            raise InvalidRequest(f"The slot file does not fit this model: {exc}") from exc
        self._slot_ids[slot] = list(saved["tokens"])[:length]
        self._slot_adapters[slot] = tuple(
            (str(name), str(version), float(scale))
            for name, version, scale in saved.get("adapters", [])
        )
        return {"n_restored": length, "n_read": path.stat().st_size}

    def erase_slot(self, slot: int) -> dict[str, Any]:
        """Forget `slot`'s cached tokens (scheduler thread)."""
        self._idle_slot(slot)
        erased, self._slot_ids[slot] = len(self._slot_ids[slot]), []
        return {"n_erased": erased}

    def _idle_slot(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise InvalidRequest(f"There is no slot {slot}; slots are 0 to {self.slots - 1}.")
        if self._owner[slot] is not None:
            raise InvalidRequest(f"Slot {slot} is processing a request.")

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish what is queued and running (abort it first to be quick), then end."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            left, self._waiting = list(self._waiting), deque()
            controls, self._controls = list(self._controls), deque()
        for job in left:
            job.send(BackendFailure("The model was unloaded."))
        self.outbox.flush()
        for _, future in controls:
            future.set_exception(BackendFailure("The model was unloaded."))

    # The loop thread.

    def _run(self) -> None:
        if self._runner.torch_threads is not None:
            torch.set_num_threads(self._runner.torch_threads)  # this thread's only
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._waiting or self._active or self._stopping or self._controls):
                        self._cond.wait()
                    if self._stopping and not (self._waiting or self._active):
                        self.outbox.flush()
                        return
                    controls, self._controls = list(self._controls), deque()
                    admitted = self._take_admissions()
                for action, future in controls:
                    try:
                        future.set_result(action())
                    except Exception as exc:
                        future.set_exception(exc)
                for job, slot in admitted:
                    self._admit(job, slot)
                if self._active:
                    self._step_safely()
                self.outbox.flush()

    def _take_admissions(self) -> list[tuple[Job, int]]:
        """Pop the waiting jobs that can have a slot now (called under the lock)."""
        taken: list[tuple[Job, int]] = []
        reserved: set[int] = set()
        kept: deque[Job] = deque()
        while self._waiting:
            job = self._waiting.popleft()
            if job.aborted.is_set():
                taken.append((job, -1))
                continue
            slot = self._pick_slot(job, reserved)
            if slot is None:
                kept.append(job)
                if job.slot is None:
                    break  # no free slot at all: keep arrival order
                continue
            reserved.add(slot)
            taken.append((job, slot))
        kept.extend(self._waiting)
        self._waiting = kept
        return taken

    def _pick_slot(self, job: Job, reserved: set[int]) -> int | None:
        free = [s for s in range(self.slots) if self._owner[s] is None and s not in reserved]
        if job.slot is not None:
            return job.slot if job.slot in free else None
        if not free:
            return None
        if job.use_prompt_cache:
            similar = [s for s in free if self._similarity(s, job) >= SLOT_PROMPT_SIMILARITY]
            if similar:
                return max(similar, key=lambda s: (self._cached_prefix(s, job), -s))
        return min(free, key=lambda s: (len(self._slot_ids[s]) > 0, self._slot_used[s], s))

    def _similarity(self, slot: int, job: Job) -> float:
        """The share of what `slot` holds that `job`'s prompt would reuse (0: none)."""
        held = len(self._slot_ids[slot])
        return self._cached_prefix(slot, job) / held if held else 0.0

    def _cached_prefix(self, slot: int, job: Job) -> int:
        """How many of `job`'s prompt tokens `slot` holds, computed under its adapters."""
        if self._slot_adapters[slot] != job.adapter_key:
            return 0
        return _common(self._slot_ids[slot], job.prompt_ids)

    def _admit(self, job: Job, slot: int) -> None:
        now = time.perf_counter()
        emitter = ChunkEmitter(job, lambda ids: self._lm.encoder.decode(ids, skip_special=True))
        if slot < 0:
            emitter.finish(_final("abort", len(job.prompt_ids), 0, 0, 0.0, 0.0))
            return
        reused = 0
        if job.use_prompt_cache:
            # At least one prompt token is always computed: its logits start the output.
            reused = min(self._cached_prefix(slot, job), len(job.prompt_ids) - 1)
        sequence = _Sequence(
            state=RowState(dry_breakers=job.dry_breakers),
            job=job,
            slot=slot,
            ids=list(job.prompt_ids),
            cached=reused,
            reused=reused,
            emitter=emitter,
            generator=make_generator(job.sampling.seed, self._lm.device),
            admitted=now,
        )
        self._owner[slot] = sequence
        self._slot_ids[slot] = []
        self._slot_adapters[slot] = job.adapter_key
        self._active.append(sequence)
        if job.max_new_tokens <= 0:
            sequence.prompt_done = now
            self._retire(sequence, "length")

    def _step_safely(self) -> None:
        try:
            self._step()
        except Exception as exc:
            log.exception("A batched step failed; ending its %d sequences", len(self._active))
            if isinstance(exc, GatewayError):
                failure: BaseException = exc
            else:
                failure = BackendFailure(f"Generation failed: {type(exc).__name__}: {exc}")
            for sequence in list(self._active):
                self._release(sequence, keep_cache=False)
                sequence.job.send(failure)

    def _step(self) -> None:
        for sequence in list(self._active):
            if sequence.job.aborted.is_set():
                self._retire(sequence, "abort")
        works: list[Work] = []
        planned: list[tuple[_Sequence, int, bool]] = []
        budget = self.prefill_chunk
        for sequence in self._active:
            pending = len(sequence.ids) - sequence.cached
            if pending > 1:
                # The prompt's last token is left for a step of its own, as a decode:
                # reusing a cached prompt leaves exactly that token to compute, so a
                # request gets the same logits whether or not its prompt was cached
                # (prefill and one-token kernels round differently, and an int8 graph
                # turns that into different text).
                count = min(pending - 1, budget)
                if count <= 0:
                    continue
                budget -= count
            else:
                count = 1
            done = sequence.cached + count == len(sequence.ids)
            works.append(
                Work(
                    slot=sequence.slot,
                    start=sequence.cached,
                    tokens=sequence.ids[sequence.cached : sequence.cached + count],
                    logits=done,
                    adapters=sequence.job.adapters,
                )
            )
            planned.append((sequence, count, done))
        if not works:
            return
        # Decodes first, grouped by adapter set: the LoRA plan then multiplies each
        # adapter's rows as a view of the step's rows (`gateway_engine.lora.batch`).
        order = sorted(
            range(len(works)),
            key=lambda i: (len(works[i].tokens) > 1, planned[i][0].job.adapter_key),
        )
        works = [works[i] for i in order]
        planned = [planned[i] for i in order]
        logits = self._runner.forward(works)
        self.steps += 1
        self._busy += len(works)
        sampling: list[_Sequence] = []
        for sequence, count, done in planned:
            sequence.cached += count
            if done:
                sampling.append(sequence)
        if sampling:
            self._sample_and_emit(sampling, logits)

    def _sample_and_emit(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        draw = self._masked(sequences, logits)
        tokens = sample(
            draw,
            [s.job.sampling for s in sequences],
            [s.ids for s in sequences],
            [s.generator for s in sequences],
            [s.state for s in sequences],
        ).tolist()
        now = time.perf_counter()
        for row, (sequence, token) in enumerate(zip(sequences, tokens, strict=True)):
            if sequence.prompt_done is None:
                sequence.prompt_done = now
            logprob: TokenLogprob | None = None
            top = sequence.job.top_logprobs
            if top is not None and sequence.job.post_sampling:
                greedy = sequence.job.sampling.temperature <= 0.0
                filtered = _sampled_distribution(draw[row : row + 1], sequence)
                logprob = post_sampling_logprob(self._lm, filtered, int(token), top, greedy)
            elif top is not None:
                logprob = token_logprob(self._lm, logits[row : row + 1], int(token), top)
            self._accept(sequence, int(token), logprob)

    def _masked(self, sequences: list[_Sequence], logits: torch.Tensor) -> torch.Tensor:
        """The logits to draw from: EOS banned for `ignore_eos`, grammars applied."""
        banned = [i for i, s in enumerate(sequences) if s.job.ignore_eos and s.job.grammar is None]
        constrained = [i for i, s in enumerate(sequences) if s.job.grammar is not None]
        if not (banned and self._lm.eos_ids) and not constrained:
            return logits
        # Masked in place unless a row reports logprobs of the raw distribution.
        raw = any(s.job.top_logprobs is not None and not s.job.post_sampling for s in sequences)
        draw = logits.clone() if raw else logits
        if banned and self._lm.eos_ids:
            eos = torch.tensor(sorted(self._lm.eos_ids), device=logits.device)
            rows = torch.tensor(banned, device=logits.device)
            draw[rows.unsqueeze(1), eos.unsqueeze(0)] = float("-inf")
        for row in constrained:
            grammar = sequences[row].job.grammar
            assert grammar is not None
            allowed = grammar.allowed().to(logits.device)
            width = min(allowed.shape[0], draw.shape[1])
            draw[row, :width].masked_fill_(~allowed[:width], float("-inf"))
        return draw

    def _accept(self, sequence: _Sequence, token: int, logprob: TokenLogprob | None) -> None:
        job = sequence.job
        sequence.completion += 1
        ends = token in self._lm.eos_ids and (not job.ignore_eos or job.grammar is not None)
        if ends:
            self._retire(sequence, "stop")
            return
        sequence.ids.append(token)
        sequence.emitter.push(token, logprob)
        if job.grammar is not None:
            job.grammar.advance(token)
        if sequence.emitter.stop_word is not None or (job.grammar is not None and job.grammar.done):
            self._retire(sequence, "stop")
        elif sequence.completion >= job.max_new_tokens or _past(sequence, job.time_limit):
            self._retire(sequence, "length")
        elif job.aborted.is_set():
            self._retire(sequence, "abort")

    def _retire(self, sequence: _Sequence, reason: FinishReason) -> None:
        self._release(sequence, keep_cache=True)
        ended = time.perf_counter()
        prompt_done = sequence.prompt_done if sequence.prompt_done is not None else ended
        self._prompt_tokens += sequence.prompt_length - sequence.reused
        self._prompt_seconds += prompt_done - sequence.admitted
        self._predicted_tokens += sequence.completion
        self._predicted_seconds += ended - prompt_done
        self._tokens_max = max(self._tokens_max, sequence.prompt_length + sequence.completion)
        sequence.emitter.finish(
            _final(
                reason,
                sequence.prompt_length,
                sequence.reused,
                sequence.completion,
                (prompt_done - sequence.admitted) * 1000.0,
                (ended - prompt_done) * 1000.0,
                sequence.slot,
            )
        )
        self.served += 1

    def _release(self, sequence: _Sequence, *, keep_cache: bool) -> None:
        slot = sequence.slot
        self._active.remove(sequence)
        self._owner[slot] = None
        self._slot_ids[slot] = sequence.ids[: sequence.cached] if keep_cache else []
        self._clock += 1
        self._slot_used[slot] = self._clock


def _past(sequence: _Sequence, limit: float | None) -> bool:
    if limit is None:
        return False
    started = sequence.prompt_done or sequence.admitted
    return time.perf_counter() - started >= limit


def _sampled_distribution(draw: torch.Tensor, sequence: _Sequence) -> torch.Tensor:
    """The `[1, vocab]` logits after the sequence's sampler chain (temperature included):
    `-inf` for every token the chain removed."""
    params = sequence.job.sampling
    return transform(draw, [params], [sequence.ids], None, [sequence.state])


def _common(cached: list[int], prompt: list[int]) -> int:
    """The length of the common prefix of two token lists."""
    count = 0
    for a, b in zip(cached, prompt, strict=False):
        if a != b:
            break
        count += 1
    return count


def _final(
    reason: FinishReason,
    prompt_tokens: int,
    reused: int,
    completion: int,
    prompt_ms: float,
    predicted_ms: float,
    slot: int | None = None,
) -> GenerationChunk:
    return GenerationChunk(
        finish_reason=reason,
        slot=slot,
        usage=Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion, cached_tokens=reused
        ),
        timings=Timings(
            prompt_n=prompt_tokens - reused,
            prompt_ms=prompt_ms,
            predicted_n=completion,
            predicted_ms=predicted_ms,
            cache_n=reused,
        ),
    )


def describe(scheduler: Scheduler) -> dict[str, Any]:
    """The scheduler's part of the backend's health diagnostics."""
    return {
        "slots": scheduler.slots,
        "context_per_slot": scheduler.context,
        "prefill_chunk": scheduler.prefill_chunk,
        "queued": scheduler.queued,
        "active": scheduler.active,
        "served": scheduler.served,
        "steps": scheduler.steps,
    }
