"""llama.cpp's prompt forms as token ids: /completion's prompts and /infill's
fill-in-the-middle prompt.

A text (or a mixed list whose first element is text) gets the model's BOS as the tokenizer
adds it; token ids are taken as they are; special-token text is read as special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway_schemas.llamacpp import (
    InfillExtra,
    MultimodalPrompt,
    PromptForm,
    PromptPiece,
    SinglePrompt,
)

from gateway.errors import InvalidRequest, NotSupported

if TYPE_CHECKING:
    from gateway.engine import Backend

NO_MULTIMODAL = "Multimodal data provided, but model does not support multimodal requests."
BAD_ELEMENT = (
    '"prompt" elements must be a string, a list of tokens, a JSON object containing a prompt '
    "string, or a list of mixed strings & tokens."
)


def split_prompts(prompt: PromptForm) -> list[SinglePrompt]:
    """One prompt, or several: a list holding a token id at its top level is one prompt
    (ids, or ids and texts mixed); any other list is a list of prompts."""
    if not isinstance(prompt, list):
        return [prompt]
    if not prompt:
        raise InvalidRequest("`prompt` is empty.", param="prompt")
    if not any(isinstance(p, int) for p in prompt):
        return [p for p in prompt if not isinstance(p, int)]
    pieces: list[PromptPiece] = [p for p in prompt if isinstance(p, str | int)]
    if len(pieces) != len(prompt):
        raise InvalidRequest(BAD_ELEMENT, param="prompt")
    return [pieces]


async def prompt_ids(backend: Backend, prompt: SinglePrompt) -> list[int]:
    """The token ids of one prompt. Multimodal data is refused: no backend reads media."""
    if isinstance(prompt, MultimodalPrompt):
        if prompt.multimodal_data:
            raise InvalidRequest(NO_MULTIMODAL, param="prompt")
        prompt = prompt.prompt_string
    ids = await mixed_ids(backend, [prompt] if isinstance(prompt, str) else prompt)
    if not ids:
        raise InvalidRequest("`prompt` is empty.", param="prompt")
    return ids


async def mixed_ids(backend: Backend, pieces: Sequence[PromptPiece]) -> list[int]:
    """Texts and ids in order; only a text at the very start gets the BOS."""
    ids: list[int] = []
    for index, piece in enumerate(pieces):
        if isinstance(piece, str):
            ids += await backend.tokenize(piece, add_special=index == 0, parse_special=True)
        else:
            ids.append(piece)
    return ids


# ---- /infill ------------------------------------------------------------------------------

FIM_SPELLINGS: dict[str, tuple[str, ...]] = {
    "prefix": ("<fim_prefix>", "<|fim_prefix|>", "<fim-prefix>", "<PRE>", "<|fim▁begin|>"),
    "suffix": ("<fim_suffix>", "<|fim_suffix|>", "<fim-suffix>", "<SUF>", "<|fim▁hole|>"),
    "middle": ("<fim_middle>", "<|fim_middle|>", "<fim-middle>", "<MID>", "<|fim▁end|>"),
    "repo": ("<|repo_name|>", "<reponame>", "<fim_repo>", "<|fim_repo|>", "<REPO>"),
    "separator": ("<|file_sep|>", "<file_sep>", "<filename>", "<|fim_sep|>"),
}
"""How fill-in-the-middle tokens are spelled in the vocabularies of code models
(StarCoder, Qwen-Coder, CodeLlama, DeepSeek-Coder, ...)."""
SNIPPET = "\n\n--- snippet ---\n\n"
"""What separates `input_extra` chunks for a model without a file separator token."""
BATCH = 2048
"""llama-server's default batch: the prefix keeps its last 3/4 of it, the suffix the rest."""


async def special_token(backend: Backend, spellings: Sequence[str]) -> int | None:
    """The id of the first spelling that is one token of the vocabulary, if any."""
    for text in spellings:
        ids = await backend.tokenize(text, add_special=False, parse_special=True)
        if len(ids) == 1 and await backend.detokenize(ids) == text:
            return ids[0]
    return None


async def fim_tokens(backend: Backend) -> dict[str, int | None]:
    """The model's prefix, suffix, middle, repo and file-separator tokens (None: absent).
    Without the first three the model cannot infill: 501, as llama-server answers."""
    found = {
        name: await special_token(backend, spellings) for name, spellings in FIM_SPELLINGS.items()
    }
    missing = "".join(
        f"{name} token is missing. "
        for name in ("prefix", "suffix", "middle")
        if found[name] is None
    )
    if missing:
        raise NotSupported(f"Infill is not supported by this model: {missing}")
    return found


async def infill_ids(
    backend: Backend,
    tokens: dict[str, int | None],
    *,
    prefix: str,
    suffix: str,
    extra: Sequence[InfillExtra],
    prompt: str,
    n_ctx: int,
    n_predict: int,
) -> list[int]:
    """`[extra][BOS]<PRE>prefix<SUF>suffix<MID>prompt`. With repo and file-separator tokens
    the extra context takes the repo-level form (`<REPO>myproject`, `<SEP>filename` before
    each chunk and before the file itself); otherwise chunks follow snippet separators.
    The prefix keeps its end and the suffix its start, and the extra context what the
    context leaves (keeping its end), in llama-server's proportions."""

    async def plain(text: str) -> list[int]:
        return await backend.tokenize(text, add_special=False, parse_special=False)

    repo, sep = tokens["repo"], tokens["separator"]
    head: list[int] = []
    if repo is not None and sep is not None:
        head += [repo, *await plain("myproject\n")]
    for chunk in extra:
        head += (
            [sep, *await plain(chunk.filename + "\n")] if sep is not None else await plain(SNIPPET)
        )
        head += await plain(chunk.text)
    if sep is not None:
        head += [sep, *await plain("filename\n")]
    middle = await plain(prompt)
    before = (await plain(prefix))[-(3 * BATCH // 4) :] if prefix else []
    after_take = max(0, BATCH // 4 - (2 + len(middle)))
    after = (await plain(suffix))[:after_take]
    bos = await backend.tokenize("", add_special=True)
    extra_take = min(max(0, n_ctx - BATCH - 2 * max(n_predict, 0)), len(head))
    kept_head = head[len(head) - extra_take :] if extra_take else []
    assert tokens["prefix"] is not None and tokens["suffix"] is not None
    assert tokens["middle"] is not None
    return [
        *kept_head,
        *bos,
        tokens["prefix"],
        *before,
        tokens["suffix"],
        *after,
        tokens["middle"],
        *middle,
    ]
