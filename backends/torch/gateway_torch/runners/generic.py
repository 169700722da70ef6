"""The fallback runner: any transformers causal LM, one forward per sequence.

Each slot keeps a `DynamicCache`; a work that starts before the cache's end crops it first
(a reused prefix). Architectures the flat runner does not know still serve every feature of
the scheduler (prompt cache, per-sequence sampling, streaming), one sequence at a time
within a step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from gateway_engine.runner import Work

if TYPE_CHECKING:
    from gateway_torch.loading import CausalModel


class GenericRunner:
    """Runs `Work` items one after another through the model's own forward."""

    name = "generic"
    lora = False
    torch_threads: int | None = None

    def __init__(self, lm: CausalModel, slots: int, context: int):
        self._lm = lm
        self.slots, self.context = slots, context
        self._caches: list[Any] = [None] * slots

    def _cache_for(self, slot: int, start: int) -> Any:
        from transformers import DynamicCache

        cache = self._caches[slot]
        if cache is not None and start > 0 and cache.get_seq_length() >= start:
            if cache.get_seq_length() > start:
                cache.crop(start)
            return cache
        if start > 0:
            raise ValueError(f"slot {slot} does not hold {start} positions")
        cache = DynamicCache(config=self._lm.model.config)
        self._caches[slot] = cache
        return cache

    def forward(self, works: list[Work]) -> torch.Tensor:
        lm = self._lm
        rows: list[torch.Tensor] = []
        for work in works:
            cache = self._cache_for(work.slot, work.start)
            ids = torch.tensor([work.tokens], dtype=torch.long, device=lm.device)
            kwargs: dict[str, Any] = {"past_key_values": cache, "use_cache": True}
            if lm.accepts_logits_to_keep:
                kwargs["logits_to_keep"] = 1
            out = lm.model(input_ids=ids, **kwargs)
            if work.logits:
                rows.append(out.logits[0, -1].float())
        if not rows:
            return torch.empty((0, lm.vocab_size), device=lm.device)
        logits = torch.stack(rows)
        if lm.tokenizer_size < logits.shape[-1]:
            logits[:, lm.tokenizer_size :] = float("-inf")
        return logits

    def export_slot(self, slot: int, length: int) -> list[torch.Tensor]:
        cache = self._cache_for(slot, length)
        return [t.clone() for layer in cache.layers for t in (layer.keys, layer.values)]

    def import_slot(self, slot: int, state: list[torch.Tensor]) -> int:
        from transformers import DynamicCache

        cache = DynamicCache(config=self._lm.model.config)
        for index in range(0, len(state), 2):
            cache.update(state[index], state[index + 1], index // 2)
        self._caches[slot] = cache
        return int(cache.get_seq_length())
