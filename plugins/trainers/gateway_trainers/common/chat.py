"""Token ids and loss masks for training rows: chats, prompt + completion, plain text.

A chat is rendered with the tokenizer's chat template, the way serving renders prompts.
The assistant turns are found by rendering prefixes (as Kiln does): the text of turn `i`
runs from the end of `render(messages[:i], add_generation_prompt=True)` (so the assistant
header is excluded) to the end of `render(messages[:i + 1])`. Each span is tokenized on
its own, so no token straddles a loss boundary, and the loss covers the turn's content and
its end-of-turn token, not what the template writes after it (a newline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
"""Special tokens that close a turn in common chat templates (used with the EOS id)."""


def end_of_turn_ids(tokenizer: Any) -> frozenset[int]:
    """The ids that end an assistant turn: EOS and the known end-of-turn specials."""
    ids: set[int] = set()
    if isinstance(tokenizer.eos_token_id, int):
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[name] for name in END_OF_TURN_TOKENS if name in vocab)
    return frozenset(ids)


def special_prefix(tokenizer: Any) -> list[int]:
    """What the tokenizer itself puts before a text (BOS, or nothing)."""
    from gateway_engine.tokens import PromptEncoder

    return PromptEncoder(tokenizer, len(tokenizer)).special_prefix


def _render(tokenizer: Any, messages: Sequence[Mapping[str, Any]], generation: bool) -> str:
    conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
    return str(
        tokenizer.apply_chat_template(
            conversation, add_generation_prompt=generation, tokenize=False
        )
    )


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids) if text else []


def _with_prefix(tokenizer: Any, ids: list[int], mask: list[bool]) -> None:
    """Put BOS (when the tokenizer adds one) in front, unless the template wrote it."""
    prefix = special_prefix(tokenizer)
    if prefix and ids[: len(prefix)] != prefix:
        ids[:0] = prefix
        mask[:0] = [False] * len(prefix)


def _turn_tokens(tokenizer: Any, text: str, ends: frozenset[int]) -> tuple[list[int], int]:
    """The tokens of an assistant span and how many of them take the loss: up to and
    including the first end-of-turn token (all of them when there is none)."""
    ids = _ids(tokenizer, text)
    for index, token in enumerate(ids):
        if token in ends:
            return ids, index + 1
    return ids, len(ids)


def encode_chat(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], max_length: int | None = None
) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and, per token, whether it takes the loss (the
    assistant turns' content and end-of-turn token). `max_length` keeps the first tokens.

    ValueError when the template does not render the conversation prefix by prefix."""
    full = _render(tokenizer, messages, generation=False)
    ends = end_of_turn_ids(tokenizer)
    ids: list[int] = []
    mask: list[bool] = []
    done = 0  # characters of `full` already tokenized
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if index == 0:
            raise ValueError("The conversation starts with an assistant message.")
        before = _render(tokenizer, messages[:index], generation=True)
        through = _render(tokenizer, messages[: index + 1], generation=False)
        if not (len(before) >= done and full.startswith(through) and through.startswith(before)):
            raise ValueError(
                f"The chat template does not render message {index} after the ones before "
                "it, so its assistant turn cannot be located."
            )
        context = _ids(tokenizer, full[done : len(before)])
        turn, trained = _turn_tokens(tokenizer, full[len(before) : len(through)], ends)
        ids += context + turn
        mask += [False] * len(context) + [True] * trained + [False] * (len(turn) - trained)
        done = len(through)
    tail = _ids(tokenizer, full[done:])
    ids += tail
    mask += [False] * len(tail)
    _with_prefix(tokenizer, ids, mask)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


def encode_completion(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], completion: str
) -> tuple[list[int], int]:
    """Token ids of prompt `messages` (with the generation prompt) followed by
    `completion` and its end-of-turn token, and the index where the completion starts."""
    prompt = _render(tokenizer, messages, generation=True)
    full = _render(
        tokenizer, [*messages, {"role": "assistant", "content": completion}], generation=False
    )
    ends = end_of_turn_ids(tokenizer)
    prompt_ids = _ids(tokenizer, prompt)
    mask = [False] * len(prompt_ids)
    _with_prefix(tokenizer, prompt_ids, mask)
    if full.startswith(prompt):
        turn, trained = _turn_tokens(tokenizer, full[len(prompt) :], ends)
        completion_ids = turn[:trained]
    else:  # a template that rewrites the turn: the text itself, then EOS
        completion_ids = [*_ids(tokenizer, completion), tokenizer.eos_token_id]
    return prompt_ids + completion_ids, len(prompt_ids)


def encode_text(
    tokenizer: Any, text: str, max_length: int | None = None
) -> tuple[list[int], list[bool]]:
    """Token ids of a plain text row followed by EOS; every text token and EOS take the
    loss (BOS, when the tokenizer adds one, does not)."""
    ids = _ids(tokenizer, text)
    if isinstance(tokenizer.eos_token_id, int):
        ids.append(tokenizer.eos_token_id)
    mask = [True] * len(ids)
    _with_prefix(tokenizer, ids, mask)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


def encode_prompt_completion(
    tokenizer: Any, prompt: str, completion: str, max_length: int | None = None
) -> tuple[list[int], list[bool]]:
    """A `{"prompt", "completion"}` row as plain text: the loss on the completion (and
    EOS) only. The prompt is used as written (no chat template)."""
    prompt_ids = _ids(tokenizer, prompt)
    completion_ids = _ids(tokenizer, completion)
    if isinstance(tokenizer.eos_token_id, int):
        completion_ids.append(tokenizer.eos_token_id)
    ids = prompt_ids + completion_ids
    mask = [False] * len(prompt_ids) + [True] * len(completion_ids)
    _with_prefix(tokenizer, ids, mask)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask
