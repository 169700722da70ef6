"""Token sampling over a batch of logits, each row with its own `SamplingParams`.

The chain follows llama.cpp's order: logit bias, penalties (repetition, presence,
frequency) over the last `penalty_last_n` tokens, then top-k, typical-p, top-p and min-p
filters computed at temperature 1, then temperature and the draw. A row with
temperature 0 takes the argmax of its biased and penalised logits (greedy).

Every function takes a `[batch, vocab]` float tensor and returns a new one; nothing is
modified in place, so the raw logits stay available for logprobs.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch
from gateway_schemas.canonical import SamplingParams

NEG_INF = float("-inf")


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private RNG: seeded when `seed` is given (reproducible), else from the OS."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed % 2**64 if seed is not None else secrets.randbits(63))
    return generator


def apply_logit_bias(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Add each row's `logit_bias` ({token id: bias}) to its logits."""
    if not any(p.logit_bias for p in params):
        return logits
    out = logits.clone()
    for row, p in enumerate(params):
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long, device=logits.device)
            bias = torch.tensor(list(p.logit_bias.values()), dtype=out.dtype, device=out.device)
            out[row].index_add_(0, ids, bias)
    return out


def _needs_penalty(p: SamplingParams) -> bool:
    active = p.repeat_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
    return active and p.penalty_last_n != 0


def apply_penalties(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    histories: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Repetition penalty (llama.cpp) and presence/frequency penalties (OpenAI).

    Over the last `penalty_last_n` tokens of each row's history (-1: all of it): a seen
    token's logit is divided by `repeat_penalty` when positive and multiplied when not,
    then lowered by `count * frequency_penalty + presence_penalty`.
    """
    if not any(_needs_penalty(p) and h for p, h in zip(params, histories, strict=True)):
        return logits
    out = logits.clone()
    vocab = out.shape[-1]
    for row, (p, history) in enumerate(zip(params, histories, strict=True)):
        if not _needs_penalty(p) or not history:
            continue
        window = history if p.penalty_last_n < 0 else history[-p.penalty_last_n :]
        ids = torch.tensor(window, dtype=torch.long, device=out.device)
        counts = torch.bincount(ids, minlength=vocab)[:vocab].to(out.dtype)
        seen = counts > 0
        values = out[row]
        if p.repeat_penalty != 1.0:
            scaled = torch.where(values > 0, values / p.repeat_penalty, values * p.repeat_penalty)
            values = torch.where(seen, scaled, values)
        values = values - counts * p.frequency_penalty - seen.to(out.dtype) * p.presence_penalty
        out[row] = values
    return out


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep the `top_k[row]` largest logits of each row (0: keep all)."""
    active = top_k > 0
    if not bool(active.any()):
        return logits
    vocab = logits.shape[-1]
    k = top_k.clamp(min=1, max=vocab).to(torch.long)
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
    remove = (logits < kth) & active.unsqueeze(1)
    return logits.masked_fill(remove, NEG_INF)


def apply_typical_p(logits: torch.Tensor, typical_p: torch.Tensor) -> torch.Tensor:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy."""
    active = typical_p < 1.0
    if not bool(active.any()):
        return logits
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).nan_to_num(0.0).sum(dim=-1, keepdim=True)
    surprise = (-log_probs - entropy).abs()
    ordered, order = surprise.sort(dim=-1)
    cumulative = probs.gather(1, order).cumsum(dim=-1)
    last = (cumulative < typical_p.unsqueeze(1)).sum(dim=1).clamp(max=logits.shape[-1] - 1)
    threshold = ordered.gather(1, last.unsqueeze(1))
    remove = (surprise > threshold) & active.unsqueeze(1)
    return logits.masked_fill(remove, NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Nucleus: keep the most likely tokens until their mass reaches `top_p[row]`."""
    active = top_p < 1.0
    if not bool(active.any()):
        return logits
    values, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(values, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove_sorted = mass_before >= top_p.unsqueeze(1)
    remove_sorted[:, 0] = False  # the most likely token always stays
    remove = torch.zeros_like(remove_sorted).scatter(1, order, remove_sorted)
    return logits.masked_fill(remove & active.unsqueeze(1), NEG_INF)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens less likely than `min_p[row]` times the most likely token."""
    active = min_p > 0.0
    if not bool(active.any()):
        return logits
    probs = torch.softmax(logits, dim=-1)
    floor = probs.max(dim=-1, keepdim=True).values * min_p.unsqueeze(1)
    remove = (probs < floor) & active.unsqueeze(1)
    return logits.masked_fill(remove, NEG_INF)


def _is_plain(p: SamplingParams) -> bool:
    """True when `p` leaves the distribution untouched (apart from temperature)."""
    filters = p.top_k > 0 or p.typical_p < 1.0 or p.top_p < 1.0 or p.min_p > 0.0
    return not (filters or p.logit_bias or _needs_penalty(p))


def _column(params: Sequence[SamplingParams], name: str, like: torch.Tensor) -> torch.Tensor:
    dtype = torch.long if name == "top_k" else like.dtype
    values = [getattr(p, name) for p in params]
    return torch.tensor(values, dtype=dtype, device=like.device)


def transform(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    histories: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Bias, penalties and filters: the logits the draw is made from (at temperature 1)."""
    out = logits.float()
    if all(_is_plain(p) for p in params):
        return out
    out = apply_logit_bias(out, params)
    out = apply_penalties(out, params, histories)
    out = apply_top_k(out, _column(params, "top_k", out))
    out = apply_typical_p(out, _column(params, "typical_p", out))
    out = apply_top_p(out, _column(params, "top_p", out))
    return apply_min_p(out, _column(params, "min_p", out))


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    histories: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """One token id per row: `[batch]` long tensor.

    `histories[row]` is the row's context so far (prompt then output) for penalties;
    `generators[row]` its RNG (None: torch's global one).
    """
    if logits.dim() != 2 or logits.shape[0] != len(params):
        raise ValueError("logits must be [batch, vocab] with one SamplingParams per row")
    filtered = transform(logits, params, histories)
    chosen = filtered.argmax(dim=-1)
    for row, p in enumerate(params):
        if p.temperature <= 0.0:
            continue
        probs = torch.softmax(filtered[row] / p.temperature, dim=-1)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0.0:
            continue  # every token was filtered out: keep the argmax
        chosen[row] = torch.multinomial(probs, 1, generator=generators[row])[0]
    return chosen
