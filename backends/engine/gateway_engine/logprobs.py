"""Log-probabilities of sampled tokens, as every dialect reports them."""

from __future__ import annotations

import math

import torch
from gateway_schemas.canonical import TokenLogprob, TopLogprob

from gateway_engine.model import LanguageModel


def token_logprob(lm: LanguageModel, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The chosen token's logprob under the raw distribution and the `top` best ones."""
    log_probs = torch.log_softmax(logits[0], dim=-1)
    text, data = lm.pieces.piece(token)
    alternatives: list[TopLogprob] = []
    if top > 0:
        values, ids = torch.topk(log_probs, top)
        for value, alt in zip(values.tolist(), ids.tolist(), strict=True):
            alt_text, alt_bytes = lm.pieces.piece(alt)
            alternatives.append(
                TopLogprob(token=alt_text, token_id=alt, logprob=value, bytes=alt_bytes)
            )
    return TokenLogprob(
        token=text,
        token_id=token,
        logprob=float(log_probs[token]),
        bytes=data,
        top=alternatives,
    )


def post_sampling_candidates(filtered: torch.Tensor, greedy: bool) -> tuple[list[int], list[float]]:
    """llama-server's post-sampling distribution of one row (`[vocab]` or `[1, vocab]`):
    the candidates the sampler chain kept (finite logits in `filtered`), most likely first,
    and their probabilities after it. Greedy decoding (temperature 0) puts all the mass on
    the best candidate and 0 on the others, as llama.cpp's temperature sampler does."""
    row = filtered.reshape(-1).float()
    kept = torch.isfinite(row).nonzero().flatten()
    if kept.numel() == 0:
        return [], []
    logits = row[kept]
    order = torch.argsort(logits, descending=True, stable=True)
    ids = kept[order]
    if greedy:
        probs = torch.zeros(ids.numel(), dtype=torch.float32)
        probs[0] = 1.0
    else:
        probs = torch.softmax(logits[order], dim=-1)
    return [int(i) for i in ids.tolist()], [float(p) for p in probs.tolist()]


def post_sampling_logprob(
    lm: LanguageModel, filtered: torch.Tensor, token: int, top: int, greedy: bool
) -> TokenLogprob:
    """The chosen token and at most `top` candidates with the probabilities they had after
    the sampler chain (`post_sampling_candidates`), as log-probabilities (`-inf` for 0).
    Fewer than `top` alternatives come back when fewer tokens survived the chain."""
    ids, probs = post_sampling_candidates(filtered, greedy)
    chosen = dict(zip(ids, probs, strict=True)).get(token, 0.0)
    text, data = lm.pieces.piece(token)
    alternatives = []
    for alt, prob in zip(ids[:top], probs[:top], strict=True):
        alt_text, alt_bytes = lm.pieces.piece(alt)
        alternatives.append(
            TopLogprob(token=alt_text, token_id=alt, logprob=_log(prob), bytes=alt_bytes)
        )
    return TokenLogprob(
        token=text, token_id=token, logprob=_log(chosen), bytes=data, top=alternatives
    )


def _log(prob: float) -> float:
    return math.log(prob) if prob > 0.0 else -math.inf
