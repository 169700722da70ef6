"""The extended samplers (KoboldCpp's set, also reachable from llama.cpp's names).

Column samplers take `[batch, vocab]` logits and one value per row, and return new logits
with the removed tokens at -inf: top-a, tail-free (tfs), top-n-sigma. Row samplers need a
row's history, RNG or memory: DRY, XTC, banned sequences. The temperature step adds
smoothing (quadratic sampling) and dynamic temperature. Mirostat replaces the draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from gateway_schemas.canonical import SamplingParams

NEG_INF = float("-inf")
MIROSTAT_V1_M = 100


@dataclass
class RowState:
    """What one sequence's samplers keep between its tokens."""

    mirostat_mu: float | None = None
    dry_breakers: frozenset[int] = field(default_factory=frozenset)
    """Token ids that end a DRY match (their text holds a sequence breaker)."""


def apply_top_a(logits: torch.Tensor, top_a: torch.Tensor) -> torch.Tensor:
    """Remove tokens less likely than `top_a * p_max^2`."""
    active = top_a > 0.0
    if not bool(active.any()):
        return logits
    probs = torch.softmax(logits, dim=-1)
    p_max = probs.max(dim=-1, keepdim=True).values
    remove = (probs < top_a.unsqueeze(1) * p_max * p_max) & active.unsqueeze(1)
    return logits.masked_fill(remove, NEG_INF)


def apply_tfs(logits: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Tail-free sampling: cut the sorted distribution where the normalised absolute
    second derivative of the probabilities has summed past `z` (1: off)."""
    active = z < 1.0
    if not bool(active.any()) or logits.shape[-1] < 3:
        return logits
    values, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(values, dim=-1)
    second = (probs[:, :-2] - 2 * probs[:, 1:-1] + probs[:, 2:]).abs()
    total = second.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    cumulative = (second / total).cumsum(dim=-1)
    keep = (cumulative <= z.unsqueeze(1)).sum(dim=-1).clamp(min=1)
    ranks = torch.arange(logits.shape[-1], device=logits.device).unsqueeze(0)
    remove_sorted = ranks >= keep.unsqueeze(1)
    remove = torch.zeros_like(remove_sorted).scatter(1, order, remove_sorted)
    return logits.masked_fill(remove & active.unsqueeze(1), NEG_INF)


def apply_top_n_sigma(logits: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Keep the tokens whose logit is within `n` standard deviations of the best."""
    active = n > 0.0
    if not bool(active.any()):
        return logits
    finite = torch.isfinite(logits)
    count = finite.sum(dim=-1, keepdim=True).clamp(min=1)
    values = torch.where(finite, logits, torch.zeros_like(logits))
    mean = values.sum(dim=-1, keepdim=True) / count
    var = (torch.where(finite, (logits - mean) ** 2, torch.zeros_like(logits))).sum(
        dim=-1, keepdim=True
    ) / count
    best = logits.max(dim=-1, keepdim=True).values
    floor = best - n.unsqueeze(1) * var.sqrt()
    remove = (logits < floor) & active.unsqueeze(1)
    return logits.masked_fill(remove, NEG_INF)


def apply_xtc(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """Exclude Top Choices: with probability `xtc_probability`, remove every token at or
    above `xtc_threshold` except the least likely of them (when two or more qualify)."""
    out = logits
    for row, p in enumerate(params):
        if p.xtc_probability <= 0.0:
            continue
        draw = float(torch.rand(1, generator=generators[row], device=logits.device))
        if draw >= p.xtc_probability:
            continue
        probs = torch.softmax(out[row], dim=-1)
        above = (probs >= p.xtc_threshold).nonzero().flatten()
        if above.numel() < 2:
            continue
        keep = above[probs[above].argmin()]
        if out is logits:
            out = logits.clone()
        out[row, above[above != keep]] = NEG_INF
    return out


def dry_lengths(history: Sequence[int], breakers: frozenset[int]) -> dict[int, int]:
    """For each token that would continue a repeat, the length of the repeat it continues.

    A repeat: the last `n` tokens of `history` also occur earlier, followed by token `t`;
    generating `t` again would extend the repetition to `n + 1`. Matches stop at tokens in
    `breakers`.
    """
    size = len(history)
    if size < 2 or history[-1] in breakers:
        return {}
    last = history[-1]
    lengths: dict[int, int] = {}
    for end in range(size - 1):
        if history[end] != last:
            continue
        length = 0
        while (
            length <= end
            and history[end - length] == history[size - 1 - length]
            and history[end - length] not in breakers
            and size - 1 - length > end
        ):
            length += 1
        following = history[end + 1]
        if following not in breakers and length > lengths.get(following, 0):
            lengths[following] = length
    return lengths


def apply_dry(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    histories: Sequence[Sequence[int]],
    states: Sequence[RowState],
) -> torch.Tensor:
    """DRY ("don't repeat yourself"): a token that would extend a repeat of `n` tokens,
    `n >= dry_allowed_length`, loses `dry_multiplier * dry_base ** (n - allowed)`."""
    out = logits
    for row, p in enumerate(params):
        if p.dry_multiplier <= 0.0 or p.dry_penalty_last_n == 0:
            continue
        history = histories[row]
        if p.dry_penalty_last_n > 0:
            history = history[-p.dry_penalty_last_n :]
        for token, length in dry_lengths(history, states[row].dry_breakers).items():
            if length < p.dry_allowed_length or token >= logits.shape[-1]:
                continue
            if out is logits:
                out = logits.clone()
            exponent = min(length - p.dry_allowed_length, 64)
            out[row, token] -= p.dry_multiplier * p.dry_base**exponent
    return out


def apply_banned_sequences(
    logits: torch.Tensor, params: Sequence[SamplingParams], histories: Sequence[Sequence[int]]
) -> torch.Tensor:
    """A banned sequence never completes: its last token is removed whenever the history
    ends with the rest of it (a one-token sequence is always removed)."""
    out = logits
    for row, p in enumerate(params):
        history = histories[row]
        for sequence in p.banned_sequences:
            if not sequence:
                continue
            head = sequence[:-1]
            if head and list(history[-len(head) :]) != head:
                continue
            if out is logits:
                out = logits.clone()
            out[row, sequence[-1]] = NEG_INF
    return out


def apply_temperature_step(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Smoothing (quadratic sampling), then temperature: fixed, or dynamic between
    `temperature +- dynatemp_range` by the normalised entropy to `dynatemp_exponent`.
    Rows at temperature 0 (greedy) keep their logits."""
    rows = []
    for row, p in enumerate(params):
        values = logits[row]
        if p.temperature <= 0.0:
            rows.append(values)
            continue
        if p.smoothing_factor > 0.0:
            best = values.max()
            values = best - p.smoothing_factor * (values - best) ** 2
        temperature = p.temperature
        if p.dynatemp_range > 0.0:
            low = max(p.temperature - p.dynatemp_range, 0.0)
            high = p.temperature + p.dynatemp_range
            probs = torch.softmax(values, dim=-1)
            candidates = int((probs > 0).sum())
            if candidates > 1:
                logp = torch.log(probs.clamp(min=1e-30))
                entropy = float(-(probs * logp).sum())
                normalised = min(max(entropy / math.log(candidates), 0.0), 1.0)
                temperature = low + (high - low) * normalised**p.dynatemp_exponent
            temperature = max(temperature, 1e-4)
        rows.append(values / temperature)
    return torch.stack(rows)


def mirostat_draw(
    logits: torch.Tensor, p: SamplingParams, state: RowState, generator: torch.Generator | None
) -> int:
    """One token by mirostat (1 or 2), which keeps the surprise near `mirostat_tau`."""
    tau, eta = p.mirostat_tau, p.mirostat_eta
    mu = state.mirostat_mu if state.mirostat_mu is not None else 2.0 * tau
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    if p.mirostat == 1:
        top = sorted_probs[: MIROSTAT_V1_M + 1].clamp(min=1e-30)
        idx = torch.arange(top.numel() - 1, dtype=top.dtype, device=top.device)
        t = torch.log((idx + 2) / (idx + 1))
        b = torch.log(top[:-1] / top[1:])
        s_hat = float((t * b).sum() / (t * t).sum().clamp(min=1e-12))
        epsilon = s_hat - 1.0
        vocab = probs.numel()
        if abs(epsilon) < 1e-6:
            k = vocab
        else:
            k = int(((epsilon * 2.0**mu) / (1 - vocab ** (-epsilon))) ** (1 / s_hat))
        keep = min(max(k, 1), vocab)
    else:
        surprise = -torch.log2(sorted_probs.clamp(min=1e-30))
        keep = max(int((surprise <= mu).sum()), 1)
    kept = sorted_probs[:keep] / sorted_probs[:keep].sum()
    pick = int(torch.multinomial(kept, 1, generator=generator)[0])
    observed = -math.log2(max(float(kept[pick]), 1e-30))
    state.mirostat_mu = mu - eta * (observed - tau)
    return int(order[pick])
