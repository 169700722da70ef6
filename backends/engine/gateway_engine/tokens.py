"""Text <-> token ids for a causal LM: prompts, chat rendering, token pieces for logprobs."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from gateway_schemas.canonical import ChatMessage, ToolDefinition

from gateway.engine.tools import CALL_OPEN, as_plain_messages, template_messages, template_tools
from gateway.errors import InvalidRequest, Unsupported

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class PromptEncoder:
    """Builds prompt token ids the way the model expects them.

    `special_prefix` is what the tokenizer itself puts before a text (usually BOS, or
    nothing); a chat prompt gets it unless the chat template already wrote it, so BOS is
    never doubled.
    """

    def __init__(self, tokenizer: Any, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.special_prefix = self._detect_prefix()

    def _detect_prefix(self) -> list[int]:
        probe = "Hello"
        plain = self.tokenizer(probe, add_special_tokens=False).input_ids
        full = self.tokenizer(probe, add_special_tokens=True).input_ids
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return list(full[:start])
        return []

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def native_tools(self) -> bool:
        """Whether the chat template shows tools itself, in the Hermes `<tool_call>` format
        that the gateway parses and constrains (`gateway.engine.tools`)."""
        template = getattr(self.tokenizer, "chat_template", None)
        return isinstance(template, str) and _shows_hermes_tools(template)

    def render_chat(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition] = ()
    ) -> str:
        """The prompt text of `messages`, ending with the assistant's turn opening; `tools`
        and the history's calls through the template when it shows them, else as text."""
        if not self.has_chat_template:
            raise Unsupported("This model has no chat template.", param="messages")
        extra: dict[str, Any] = {}
        if self.native_tools:
            if tools:
                extra["tools"] = template_tools(tools)
        else:
            messages = as_plain_messages(messages, tools)
        conversation = template_messages(messages)
        try:
            text = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False, **extra
            )
        except Exception as exc:  # jinja raises from inside the template (raise_exception)
            raise InvalidRequest(f"The chat template refused the messages: {exc}") from None
        return str(text)

    def encode_text(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Token ids of `text`; `add_special` adds what the tokenizer adds (BOS or not);
        without `parse_special`, special-token text is tokenized as plain text."""
        encoded = self.tokenizer(
            text, add_special_tokens=add_special, split_special_tokens=not parse_special
        )
        return list(encoded.input_ids)

    def encode_chat(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolDefinition] = ()
    ) -> list[int]:
        """Token ids of the rendered chat, with BOS exactly once when the model wants it."""
        ids = self.encode_text(self.render_chat(messages, tools), add_special=False)
        prefix = self.special_prefix
        if prefix and ids[: len(prefix)] != prefix:
            ids = prefix + ids
        return ids

    def check_ids(self, ids: Sequence[int], param: str) -> None:
        """Raise InvalidRequest when an id is outside the vocabulary."""
        for token in ids:
            if not 0 <= token < self.vocab_size:
                raise InvalidRequest(
                    f"Token id {token} is out of range [0, {self.vocab_size}).", param=param
                )

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return str(
            self.tokenizer.decode(
                list(ids),
                skip_special_tokens=skip_special,
                clean_up_tokenization_spaces=False,
            )
        )


class TokenPieces:
    """The text and raw bytes of single tokens, for logprobs (memoised)."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._byte_decoder = _byte_level_decoder(tokenizer)
        self._added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
        self.piece = lru_cache(maxsize=65536)(self._piece)
        self.containing = lru_cache(maxsize=16)(self._containing)

    def _containing(self, needles: tuple[str, ...], vocab_size: int) -> frozenset[int]:
        """Ids of the tokens whose text contains any of `needles` (DRY's breakers)."""
        found = set()
        for token in range(vocab_size):
            text = self.piece(token)[0]
            if any(needle in text for needle in needles):
                found.add(token)
        return frozenset(found)

    def _piece(self, token_id: int) -> tuple[str, list[int]]:
        raw = self._tokenizer.convert_ids_to_tokens(token_id)
        if raw is None:
            return "", []
        if token_id in self._added:
            return raw, list(raw.encode("utf-8"))
        match = _BYTE_TOKEN.match(raw)
        if match:
            data = bytes([int(match.group(1), 16)])
            return data.decode("utf-8", errors="replace"), list(data)
        if self._byte_decoder is not None:
            try:
                data = bytes(self._byte_decoder[c] for c in raw)
            except KeyError:
                data = raw.encode("utf-8")
            return data.decode("utf-8", errors="replace"), list(data)
        text = raw.replace("\u2581", " ")  # sentencepiece's word boundary
        return text, list(text.encode("utf-8"))


@lru_cache(maxsize=8)
def _shows_hermes_tools(template: str) -> bool:
    """The template reads a `tools` variable and writes `<tool_call>` blocks."""
    import jinja2
    import jinja2.meta

    if CALL_OPEN not in template:
        return False
    try:
        parsed = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return False
    return "tools" in jinja2.meta.find_undeclared_variables(parsed)


def _byte_level_decoder(tokenizer: Any) -> dict[str, int] | None:
    """GPT-2 style byte-level BPE: the map from token characters back to bytes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not _has_type(json.loads(backend.to_str()).get("decoder"), "ByteLevel"):
        return None
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _has_type(node: Any, name: str) -> bool:
    """Whether a tokenizers JSON component (possibly a Sequence of them) has type `name`."""
    if isinstance(node, dict):
        return node.get("type") == name or any(_has_type(v, name) for v in node.values())
    if isinstance(node, list):
        return any(_has_type(v, name) for v in node)
    return False
