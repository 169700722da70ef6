"""What the Kobold family remembers between requests: generations by genkey (for polling,
abort and last_logprobs), performance figures, and the saved KV states."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gateway_schemas.canonical import GenerationChunk, TokenLogprob

from gateway.storage import StoryStore

KEEP_FINISHED = 64
MULTIPLAYER_BUSY_SECONDS = 6.0
"""How long a multiplayer participant counts as busy after saying so (KoboldCpp's)."""


@dataclass
class KoboldGeneration:
    """One generation, growing as its chunks arrive."""

    genkey: str
    request_id: str
    model: str
    seed: int
    pieces: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    final: GenerationChunk | None = None
    started: float = field(default_factory=time.time)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, chunk: GenerationChunk) -> None:
        if chunk.text:
            self.pieces.append(chunk.text)
        self.logprobs.extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            self.final = chunk


@dataclass
class SavedState:
    tokens: int
    size: int
    slot: int
    model: str


class KoboldState:
    """Per-app state of the family (created when the family registers its routes)."""

    def __init__(self, store: StoryStore):
        self.store = store
        self.started = time.time()
        self.generations: OrderedDict[str, KoboldGeneration] = OrderedDict()
        self.last: KoboldGeneration | None = None
        self.in_flight = 0
        self.total_gens = 0
        self.last_finished = time.time()
        self.saved: dict[int, SavedState] = {}
        self.players_busy: dict[str, float] = {}

    def begin(self, generation: KoboldGeneration) -> None:
        """Record a started generation (its place in `in_flight` was reserved before)."""
        self.generations[generation.genkey] = generation
        self.generations.move_to_end(generation.genkey)
        self.last = generation
        while len(self.generations) > KEEP_FINISHED:
            oldest = next(iter(self.generations.values()))
            if oldest.final is None:
                break
            self.generations.popitem(last=False)

    def end(self, generation: KoboldGeneration) -> None:
        self.in_flight -= 1
        self.total_gens += 1
        self.last_finished = time.time()

    def player_busy(self, sender: str) -> None:
        """A multiplayer participant is typing or generating."""
        if sender:
            self.players_busy[sender] = time.monotonic()

    def multiplayer_idle(self, sender: str) -> int:
        """1 when nothing generates and no other participant was busy lately, else 0."""
        now = time.monotonic()
        others = (when for who, when in self.players_busy.items() if who != sender)
        busy = self.in_flight > 0 or any(now - when < MULTIPLAYER_BUSY_SECONDS for when in others)
        return 0 if busy else 1

    async def erase_story(self, slot: int) -> None:
        """Empty a save slot (KoboldCpp's save with no data)."""
        await self.store.erase_story(slot)

    def find(self, genkey: str) -> KoboldGeneration | None:
        """The generation of `genkey`; without a key, the most recent one."""
        if genkey:
            return self.generations.get(genkey)
        return self.last

    def perf(self, version: str) -> dict[str, Any]:
        last = self.last
        final = last.final if last is not None else None
        timings = final.timings if final is not None else None
        usage = final.usage if final is not None else None
        stop_reason = -1
        if final is not None:
            stop_reason = {"length": 0, "stop": 2 if final.stop_word else 1}.get(
                final.finish_reason or "", -1
            )
        return {
            "last_process": (timings.prompt_ms / 1000.0) if timings else 0.0,
            "last_eval": (timings.predicted_ms / 1000.0) if timings else 0.0,
            "last_token_count": usage.completion_tokens if usage else 0,
            "last_input_count": usage.prompt_tokens if usage else 0,
            "last_seed": last.seed if last is not None else -1,
            "last_draft_success": 0,
            "last_draft_failed": 0,
            "total_gens": self.total_gens,
            "stop_reason": stop_reason,
            "total_img_gens": 0,
            "total_tts_gens": 0,
            "total_transcribe_gens": 0,
            "queue": max(self.in_flight - 1, 0),
            "idle": 1 if self.in_flight == 0 else 0,
            "hordeexitcounter": -1,
            "uptime": int(time.time() - self.started),
            "idletime": int(time.time() - self.last_finished) if self.in_flight == 0 else 0,
            "quiet": False,
            "last_process_time": (timings.prompt_ms / 1000.0) if timings else 0.0,
            "last_eval_time": (timings.predicted_ms / 1000.0) if timings else 0.0,
            "last_process_speed": timings.prompt_per_second if timings else 0.0,
            "last_eval_speed": timings.predicted_per_second if timings else 0.0,
            "version": version,
        }
