"""Stop strings matched across token boundaries, never emitted.

Backends feed each decoded text delta through a `StopMatcher`; it releases text only
once no stop string can start inside it, and cuts the output at the first match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]):
        self._stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None

    def feed(self, delta: str) -> str:
        """Text that is safe to emit now. After a match, `matched` is set and feed returns ''."""
        if self.matched is not None:
            return ""
        if not self._stops:
            return delta
        text = self._held + delta
        first: tuple[int, str] | None = None
        for stop in self._stops:
            at = text.find(stop)
            if at != -1 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            self.matched = first[1]
            self._held = ""
            return text[: first[0]]
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Release held text at the end of a stream that did not stop on a word."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without splitting UTF-8 characters.

    `decode` is the tokenizer's decode of a list of ids. A delta that ends in the Unicode
    replacement character is held back until the following tokens complete it.
    """

    def __init__(self, decode: Callable[[list[int]], str], prefix_ids: Sequence[int] = ()):
        self._decode = decode
        self._ids: list[int] = list(prefix_ids[-4:])
        self._offset = len(self._decode(self._ids)) if self._ids else 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        delta = text[self._offset :]
        # Keep a short window of ids so decoding stays O(1) per token.
        self._ids = self._ids[-4:]
        self._offset = len(self._decode(self._ids))
        return delta
