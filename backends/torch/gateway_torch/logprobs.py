"""Log-probabilities of sampled tokens, as every dialect reports them."""

from __future__ import annotations

import torch
from gateway_schemas.canonical import TokenLogprob, TopLogprob

from gateway_torch.loading import CausalModel


def token_logprob(lm: CausalModel, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
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
