"""Generations through another served model's backend (the teacher, the judge), and the
judge's scoring prompt.

The judge is asked, as OpenTracy asks it, for JSON scores in 0..1 of `coherence`,
`helpfulness`, `correctness` and `format`, weighted .25/.30/.30/.15 (a missing key counts
0.5); an answer with no JSON object scores 0.5, so a judge that cannot follow the format
ranks nothing rather than failing the job. Prompt and response are cut to 4,000 characters.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from gateway_schemas.canonical import ChatMessage, GenerationRequest, SamplingParams

WEIGHTS = {"coherence": 0.25, "helpfulness": 0.30, "correctness": 0.30, "format": 0.15}
NEUTRAL = 0.5
CUT = 4000
JUDGE_PROMPT = """You are grading an AI assistant's response to a user's request.

Request:
{prompt}

Response:
{response}

Score the response from 0 to 1 on each of: coherence, helpfulness, correctness, format.
Answer with only a JSON object, for example:
{{"coherence": 0.8, "helpfulness": 0.7, "correctness": 0.9, "format": 1.0}}"""

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Answer:
    text: str
    cost: float
    prompt_tokens: int
    completion_tokens: int


async def generate(
    backend: Any,
    model: str,
    messages: Messages,
    *,
    temperature: float,
    max_tokens: int,
    tenant: str | None,
    seed: int | None = None,
) -> Answer:
    """One answer of `backend` (a served model's backend) to `messages`."""
    request = GenerationRequest(
        id=f"distill-{uuid.uuid4().hex[:12]}",
        model=model,
        messages=[ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        sampling=SamplingParams(temperature=temperature, seed=seed),
        max_tokens=max_tokens,
        tenant=tenant,
    )
    parts: list[str] = []
    usage = None
    async for chunk in backend.generate(request):
        parts.append(chunk.text)
        if chunk.finish_reason is not None:
            if chunk.finish_reason in ("error", "abort"):
                raise RuntimeError(f"`{model}` ended its answer with {chunk.finish_reason}")
            usage = chunk.usage
    cost = float(usage.cost or 0.0) if usage is not None else 0.0
    return Answer(
        text="".join(parts),
        cost=cost,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
    )


def judge_messages(messages: Messages, response: str) -> Messages:
    prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    text = JUDGE_PROMPT.format(prompt=prompt[-CUT:], response=response[:CUT])
    return [{"role": "user", "content": text}]


def parse_score(text: str) -> float:
    """The weighted score in a judge's answer; NEUTRAL when it has no JSON object."""
    for match in re.finditer(r"\{[^{}]*\}", text):
        try:
            scores = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(scores, dict):
            return round(sum(w * _clamp(scores.get(k, NEUTRAL)) for k, w in WEIGHTS.items()), 6)
    return NEUTRAL


def _clamp(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return NEUTRAL
    return min(max(number, 0.0), 1.0)
