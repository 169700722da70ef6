"""Constrained decoding: GBNF grammars and JSON schemas, through llguidance.

Why llguidance: it reads both llama.cpp's GBNF and JSON schema (the two forms every dialect
sends), computes a token mask for a 50k vocabulary in tens of microseconds on the CPU
(Rust, lexer-driven, no per-token Python), builds its tokenizer straight from a fast
Hugging Face tokenizer, needs no torch.compile or GPU kernels, and its matchers are cheap
to copy: a grammar is compiled once and each request gets its own copy. (xgrammar reads
both formats too, but precompiles per vocabulary with heavier start-up and ties itself to
torch versions.)

`Grammars` compiles and caches; `GrammarState` follows one sequence: which tokens are
allowed next, what was sampled, whether the grammar is complete.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
from gateway_schemas.canonical import Constraint, GrammarConstraint

from gateway.errors import InvalidRequest

if TYPE_CHECKING:
    import llguidance

CACHE_SIZE = 64


class Grammars:
    """Compiles constraints against one model's tokenizer; keeps the last `CACHE_SIZE`."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_ids: frozenset[int]):
        self._hf_tokenizer = hf_tokenizer
        self._vocab_size = vocab_size
        self._eos = sorted(eos_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def _lltokenizer(self) -> llguidance.LLTokenizer:
        import llguidance

        if self._tokenizer is None:  # about a second: built on first use
            self._tokenizer = llguidance.LLTokenizer(
                _tokenizer_json(self._hf_tokenizer),
                n_vocab=self._vocab_size,
                eos_token=self._eos or None,
            )
        return self._tokenizer

    def compile(self, constraint: Constraint) -> GrammarState:
        """A fresh state for `constraint`; InvalidRequest with the library's message when
        the grammar or schema is invalid. Blocking: call it off the event loop."""
        import llguidance

        param = "grammar" if isinstance(constraint, GrammarConstraint) else "json_schema"
        if isinstance(constraint, GrammarConstraint):
            key = "gbnf:" + constraint.grammar
        else:
            key = "json:" + json.dumps(constraint.schema, sort_keys=True)
        with self._lock:
            prototype = self._cache.get(key)
            if prototype is not None:
                self._cache.move_to_end(key)
            else:
                try:
                    if isinstance(constraint, GrammarConstraint):
                        grammar = llguidance.grammar_from("gbnf", constraint.grammar)
                    else:
                        schema = constraint.schema or {"type": "object"}
                        # Compact JSON: a small model given free whitespace can loop on
                        # blank lines forever.
                        grammar = llguidance.LLMatcher.grammar_from_json_schema(
                            schema, defaults={"whitespace_flexible": False}
                        )
                except (ValueError, RuntimeError) as exc:
                    raise InvalidRequest(f"Invalid {param}: {exc}", param=param) from exc
                prototype = llguidance.LLMatcher(self._lltokenizer(), grammar, log_level=0)
                if prototype.is_error():
                    raise InvalidRequest(f"Invalid {param}: {prototype.get_error()}", param=param)
                self._cache[key] = prototype
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
            state = GrammarState(prototype.deep_copy(), self._vocab_size)
        # The first mask of a state builds the lexer's lazy tables (tens of ms): pay for
        # it here, off the scheduler thread, rather than inside a batched step.
        state.allowed()
        return state


def _tokenizer_json(hf_tokenizer: Any) -> str:
    """The fast tokenizer as JSON for llguidance, with a decoder it reads right.

    A GPT-2 style byte-level BPE converted from GGUF (SmolLM2's) gets a decoder chain of
    sentencepiece steps and then ByteLevel; llguidance does not see the ByteLevel inside
    the chain and would take `Ġ`/`Ċ` for literal text, so no token could spell a space or
    a newline of a grammar. The ByteLevel step alone decodes every token of such a vocabulary.
    """
    backend = copy.copy(hf_tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    data = json.loads(backend.to_str())
    decoder = data.get("decoder") or {}
    if decoder.get("type") == "Sequence":
        byte_level = [d for d in decoder.get("decoders", []) if d.get("type") == "ByteLevel"]
        if byte_level:
            data["decoder"] = byte_level[0]
    return json.dumps(data)


class GrammarState:
    """One sequence's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._words = (vocab_size + 31) // 32
        self._bits = torch.arange(32, dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        """A `[vocab]` bool tensor of the tokens the grammar allows next."""
        mask = torch.full((self._words,), -1, dtype=torch.int32)
        self._matcher.unsafe_compute_mask_ptr(mask.data_ptr(), self._words * 4)
        bits = (mask.unsqueeze(1) >> self._bits) & 1
        return bits.view(-1)[: self._vocab_size].bool()

    def advance(self, token: int) -> None:
        """Record the sampled token (it was allowed, so this cannot fail)."""
        self._matcher.consume_token(token)

    @property
    def done(self) -> bool:
        """The grammar is complete: nothing more may be generated."""
        return bool(self._matcher.is_stopped())

    @property
    def error(self) -> str | None:
        return self._matcher.get_error() if self._matcher.is_error() else None
