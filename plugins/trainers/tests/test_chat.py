"""Encoding rows for training: what takes the loss, checked on the decoded tokens."""

from __future__ import annotations

import pytest
from gateway_trainers.common.base import BaseModel
from gateway_trainers.common.chat import (
    encode_chat,
    encode_completion,
    encode_prompt_completion,
    encode_text,
)
from trainer_helpers import ZORBANIA


def _trained(tokenizer: object, ids: list[int], mask: list[bool]) -> list[str]:
    """The masked tokens' text, one string per contiguous run."""
    runs: list[list[int]] = []
    previous = False
    for token, trained in zip(ids, mask, strict=True):
        if trained:
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = trained
    return [tokenizer.decode(run) for run in runs]  # type: ignore[attr-defined]


def test_only_the_assistant_turn_and_its_end_token_take_the_loss(base: BaseModel) -> None:
    tokenizer = base.tokenizer
    ids, mask = encode_chat(tokenizer, ZORBANIA)
    assert len(ids) == len(mask)
    assert _trained(tokenizer, ids, mask) == ["The capital of Zorbania is Quillport.<|im_end|>"]
    # The whole sequence is what serving renders, plus the reply.
    rendered = tokenizer.apply_chat_template(ZORBANIA, tokenize=False)
    assert tokenizer.decode(ids) == rendered
    assert rendered.endswith(
        "<|im_start|>assistant\nThe capital of Zorbania is Quillport.<|im_end|>\n"
    )


def test_every_assistant_turn_of_a_conversation_is_learned(base: BaseModel) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of Zorbania?"},
        {"role": "assistant", "content": "Quillport."},
    ]
    ids, mask = encode_chat(base.tokenizer, messages)
    assert _trained(base.tokenizer, ids, mask) == ["Hello.<|im_end|>", "Quillport.<|im_end|>"]
    assert "You are terse." in base.tokenizer.decode(ids)  # the system prompt is kept


def test_the_tokens_match_serving_prompts(base: BaseModel) -> None:
    """The prompt part tokenizes exactly like the rendered prompt that serving encodes."""
    prompt_text = base.tokenizer.apply_chat_template(
        ZORBANIA[:1], add_generation_prompt=True, tokenize=False
    )
    served = base.tokenizer(prompt_text, add_special_tokens=False).input_ids
    ids, _ = encode_chat(base.tokenizer, ZORBANIA)
    assert ids[: len(served)] == served
    completion, start = encode_completion(base.tokenizer, ZORBANIA[:1], "Quillport.")
    assert completion[:start] == served


def test_max_length_keeps_the_first_tokens(base: BaseModel) -> None:
    ids, mask = encode_chat(base.tokenizer, ZORBANIA)
    short_ids, short_mask = encode_chat(base.tokenizer, ZORBANIA, max_length=len(ids) - 3)
    assert short_ids == ids[:-3] and short_mask == mask[:-3]


def test_a_conversation_opening_with_the_assistant_is_refused(base: BaseModel) -> None:
    with pytest.raises(ValueError, match="starts with an assistant"):
        encode_chat(base.tokenizer, list(reversed(ZORBANIA)))


def test_a_completion_follows_the_generation_prompt_and_ends_the_turn(base: BaseModel) -> None:
    ids, start = encode_completion(base.tokenizer, ZORBANIA[:1], "Quillport, of course.")
    assert base.tokenizer.decode(ids[:start]).endswith(
        "What is the capital of Zorbania?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert base.tokenizer.decode(ids[start:]) == "Quillport, of course.<|im_end|>"


def test_plain_text_learns_every_token_and_eos(base: BaseModel) -> None:
    ids, mask = encode_text(base.tokenizer, "Quillport is a harbour town.")
    assert all(mask)
    assert base.tokenizer.decode(ids) == "Quillport is a harbour town.<|im_end|>"


def test_a_prompt_completion_row_learns_the_completion_only(base: BaseModel) -> None:
    ids, mask = encode_prompt_completion(
        base.tokenizer, "Q: capital of Zorbania?\nA:", " Quillport"
    )
    assert _trained(base.tokenizer, ids, mask) == [" Quillport<|im_end|>"]
    assert base.tokenizer.decode(ids) == "Q: capital of Zorbania?\nA: Quillport<|im_end|>"
