"""Token sampling over a batch of logits, each row with its own `SamplingParams`.

The chain follows llama.cpp's default order: logit bias and banned sequences, penalties
(repetition, presence, frequency) over the last `penalty_last_n` tokens, DRY, then the
filters (top-n-sigma, top-k, top-a, tail-free, typical-p, top-p, min-p), XTC, then
temperature (with smoothing and dynamic temperature) and the draw (or mirostat). The
extended samplers live in `sampling_extra`. A row may give its own `order` (llama.cpp's
`samplers`, Kobold's `sampler_order`). A row with temperature 0 takes the argmax of its
biased and penalised logits (greedy).

Every function takes a `[batch, vocab]` float tensor and returns a new one; nothing is
modified in place, so the raw logits stay available for logprobs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import get_args

import msgspec
import torch
from gateway_schemas.canonical import SamplerName, SamplingParams

from gateway_engine.sampling_extra import (
    RowState,
    apply_banned_sequences,
    apply_dry,
    apply_temperature_step,
    apply_tfs,
    apply_top_a,
    apply_top_n_sigma,
    apply_xtc,
    mirostat_draw,
)

NEG_INF = float("-inf")
MAX_CANDIDATES = 1024
"""Up to this many possible tokens a row's draw is made among them alone (found by
`topk`); with more (no top-k), over the whole vocabulary."""


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
            penalty: torch.Tensor | float = p.repeat_penalty
            if p.repeat_penalty_slope > 0.0 and len(window) > 1:
                penalty = _sloped_penalty(ids, p, vocab, out.dtype)
            scaled = torch.where(values > 0, values / penalty, values * penalty)
            values = torch.where(seen, scaled, values)
        values = values - counts * p.frequency_penalty - seen.to(out.dtype) * p.presence_penalty
        out[row] = values
    return out


def _sloped_penalty(
    ids: torch.Tensor, p: SamplingParams, vocab: int, dtype: torch.dtype
) -> torch.Tensor:
    """Per token, KoboldAI's sloped repetition penalty at its most recent position."""
    x = torch.linspace(-1.0, 1.0, ids.numel(), device=ids.device, dtype=dtype)
    slope = p.repeat_penalty_slope
    curve = (slope * x) / (1 + x.abs() * (slope - 1))
    factors = 1 + ((curve + 1) / 2) * (p.repeat_penalty - 1)
    ones = torch.ones(vocab, device=ids.device, dtype=dtype)
    reduce = "amax" if p.repeat_penalty >= 1.0 else "amin"
    return ones.scatter_reduce(0, ids, factors, reduce=reduce, include_self=False)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep the `top_k[row]` largest logits of each row (0: keep all)."""
    active = top_k > 0
    if not bool(active.any()):
        return logits
    vocab = logits.shape[-1]
    k = top_k.clamp(min=1, max=vocab).to(torch.long)
    # The widest k any row asks for, by `topk`: not a sort of the whole vocabulary per row.
    widest = logits.topk(int(k.max()), dim=-1).values
    kth = widest.gather(1, (k - 1).unsqueeze(1))
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
    # Only the tokens an earlier sampler (top_k) left possible need ordering.
    possible = int((logits > NEG_INF).sum(dim=-1).max())
    if 0 < possible < logits.shape[-1]:
        values, order = logits.topk(possible, dim=-1)
    else:
        values, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(values, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove_sorted = mass_before >= top_p.unsqueeze(1)
    remove_sorted[:, 0] = False  # the most likely token always stays
    remove = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, remove_sorted)
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
    extended = (
        p.top_a > 0.0
        or p.tfs < 1.0
        or p.top_n_sigma > 0.0
        or p.xtc_probability > 0.0
        or p.dry_multiplier > 0.0
        or bool(p.banned_sequences)
    )
    return not (filters or extended or p.logit_bias or _needs_penalty(p))


def _column(params: Sequence[SamplingParams], name: str, like: torch.Tensor) -> torch.Tensor:
    dtype = torch.long if name == "top_k" else like.dtype
    values = [getattr(p, name) for p in params]
    return torch.tensor(values, dtype=dtype, device=like.device)


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature; rows at 0 (greedy) stay as they are."""
    active = temperature > 0.0
    if not bool(active.any()):
        return logits
    scale = torch.where(active, temperature, torch.ones_like(temperature))
    return logits / scale.unsqueeze(1)


@dataclass
class Rows:
    """What the row samplers need besides logits and parameters."""

    histories: Sequence[Sequence[int]]
    generators: Sequence[torch.Generator | None]
    states: Sequence[RowState]


def _temperature(logits: torch.Tensor, params: Sequence[SamplingParams], _: Rows) -> torch.Tensor:
    if any(p.smoothing_factor > 0.0 or p.dynatemp_range > 0.0 for p in params):
        return apply_temperature_step(logits, params)
    return apply_temperature(logits, _column(params, "temperature", logits))


def _column_step(function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], name: str) -> Step:
    def step(logits: torch.Tensor, params: Sequence[SamplingParams], _: Rows) -> torch.Tensor:
        return function(logits, _column(params, name, logits))

    return step


Step = Callable[[torch.Tensor, Sequence[SamplingParams], Rows], torch.Tensor]
STEPS: dict[str, Step] = {
    "penalties": lambda logits, params, rows: apply_penalties(logits, params, rows.histories),
    "dry": lambda logits, params, rows: apply_dry(logits, params, rows.histories, rows.states),
    "top_n_sigma": _column_step(apply_top_n_sigma, "top_n_sigma"),
    "top_k": _column_step(apply_top_k, "top_k"),
    "top_a": _column_step(apply_top_a, "top_a"),
    "tfs": _column_step(apply_tfs, "tfs"),
    "typical_p": _column_step(apply_typical_p, "typical_p"),
    "top_p": _column_step(apply_top_p, "top_p"),
    "min_p": _column_step(apply_min_p, "min_p"),
    "xtc": lambda logits, params, rows: apply_xtc(logits, params, rows.generators),
    "temperature": _temperature,
}
DEFAULT_ORDER: tuple[str, ...] = get_args(SamplerName)
"""The canonical names in their declared order: llama.cpp's default chain, with Kobold's
top-a and tail-free in their usual place."""


def _chain(
    logits: torch.Tensor, params: Sequence[SamplingParams], rows: Rows, order: tuple[str, ...]
) -> torch.Tensor:
    if all(_is_plain(p) for p in params):
        order = tuple(name for name in order if name == "temperature")
    else:
        logits = apply_logit_bias(logits, params)
        logits = apply_banned_sequences(logits, params, rows.histories)
    for name in order:
        logits = STEPS[name](logits, params, rows)
    return logits


def transform(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    histories: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator | None] | None = None,
    states: Sequence[RowState] | None = None,
) -> torch.Tensor:
    """Logit bias and banned sequences, then each row's sampler chain in its `order`
    (default `DEFAULT_ORDER`), temperature included: the logits of the distribution the
    draw is made from. Without `generators`, XTC (random by design) is skipped."""
    out = logits.float()
    count = len(params)
    rows = Rows(
        histories=histories,
        generators=generators if generators is not None else [None] * count,
        states=states if states is not None else [RowState() for _ in range(count)],
    )
    if generators is None:
        params = [msgspec.structs.replace(p, xtc_probability=0.0) for p in params]
    orders = [tuple(p.order) or DEFAULT_ORDER for p in params]
    if all(order == orders[0] for order in orders):
        return _chain(out, params, rows, orders[0])
    return torch.cat(
        [
            _chain(
                out[i : i + 1],
                [params[i]],
                Rows([rows.histories[i]], [rows.generators[i]], [rows.states[i]]),
                orders[i],
            )
            for i in range(count)
        ]
    )


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Each row's first highest index (`[batch]` long). On the CPU through NumPy: torch's
    `argmax` is not vectorized there and took 1.0 ms for 16 rows of SmolLM2's 49k
    vocabulary on one thread, against NumPy's 0.09 ms."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return torch.from_numpy(logits.numpy().argmax(axis=-1))
    return logits.argmax(dim=-1)


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    histories: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator | None],
    states: Sequence[RowState] | None = None,
) -> torch.Tensor:
    """One token id per row: `[batch]` long tensor.

    `histories[row]` is the row's context so far (prompt then output) for penalties and
    DRY; `generators[row]` its RNG (None: torch's global one); `states[row]` what its
    samplers remember (mirostat's running target, DRY's breakers).
    """
    if logits.dim() != 2 or logits.shape[0] != len(params):
        raise ValueError("logits must be [batch, vocab] with one SamplingParams per row")
    states = states if states is not None else [RowState() for _ in params]
    filtered = transform(logits, params, histories, generators, states)
    chosen = argmax_rows(filtered)
    drawn = [row for row, p in enumerate(params) if p.temperature > 0.0]
    if not drawn:
        return chosen
    # The draw is among the tokens the chain left possible: after top-k (llama.cpp's
    # default 40) that is a few dozen, not the whole vocabulary of every row.
    possible = int((filtered[drawn] > NEG_INF).sum(dim=-1).max())
    candidates: tuple[torch.Tensor, torch.Tensor] | None = None
    if 0 < possible <= MAX_CANDIDATES:
        candidates = filtered.topk(possible, dim=-1)
    for row in drawn:
        p = params[row]
        if candidates is None:
            values, ids = filtered[row], None
        else:
            values, ids = candidates[0][row], candidates[1][row]
        probs = torch.softmax(values, dim=-1)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0.0:
            continue  # every token was filtered out: keep the argmax
        if p.mirostat:
            chosen[row] = mirostat_draw(filtered[row], p, states[row], generators[row])
            continue
        pick = torch.multinomial(probs, 1, generator=generators[row])[0]
        chosen[row] = pick if ids is None else ids[pick]
    return chosen
