"""Prefix affinity: which deployment a prompt prefers, and the order of the others.

For a group of replicas with a prompt (KV) cache, prompts that start alike should land on
the same replica, whose cache already holds their start. Three pure pieces:

- `prefix_key`: the first characters of the prompt as the caller sent it, in one
  canonical form (tools, then each message's role, content and tool calls; or the text);
- `rendezvous`: the group in highest-random-weight order for a key (Thaler and Ravishankar's
  rendezvous hashing): each deployment's weight is a hash of the key and the deployment's
  id, so the order does not depend on the order of the configuration, every gateway with
  the same deployments agrees on it, and removing a deployment moves only the keys that
  preferred it;
- `bounded`: consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam,
  2018): the first deployment in that order whose generations in flight, this one
  included, stay within `ceil(balance x (in flight + 1) / deployments)`; so one hot prefix
  spills onto the next replica of its order instead of queueing behind itself.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import msgspec
from gateway_schemas.canonical import GenerationRequest

from gateway_teacher.targets import Target

SEPARATOR = "\x1e"
"""Between messages, and between a message's role and content: never typed in a prompt."""


def prefix_key(request: GenerationRequest, length: int) -> str:
    """The first `length` characters of `request`'s prompt in canonical form: the tools'
    JSON (a chat template shows them first), then every message as role, content and tool
    calls; or the text prompt (a prompt of token ids as their JSON)."""
    if request.messages is None:
        prompt = request.prompt or ""
        text = prompt if isinstance(prompt, str) else msgspec.json.encode(prompt).decode()
        return text[:length]
    parts: list[str] = []
    size = 0
    if request.tools:
        parts.append(msgspec.json.encode(request.tools).decode())
        size += len(parts[-1])
    for message in request.messages:
        if size >= length:
            break
        calls = msgspec.json.encode(message.tool_calls).decode() if message.tool_calls else ""
        parts.append(f"{message.role}{SEPARATOR}{message.content}{calls}{SEPARATOR}")
        size += len(parts[-1])
    return "".join(parts)[:length]


def rendezvous(key: str, targets: Sequence[Target]) -> list[Target]:
    """`targets` from the highest weight for `key` to the lowest."""
    digest = hashlib.blake2b(key.encode(), digest_size=32).digest()

    def weight(target: Target) -> bytes:
        return hashlib.blake2b(target.id.encode(), digest_size=8, key=digest).digest()

    return sorted(targets, key=weight, reverse=True)


def bounded(
    candidates: Sequence[Target], load: Mapping[str, int], group: Sequence[Target], balance: float
) -> Target:
    """The first of `candidates` (in preference order) that may take one more generation:
    its load after it at most `balance` times the group's average after it, rounded up.
    When none may (the others are cooling or tried), the least loaded candidate."""
    total = sum(load.get(t.id, 0) for t in group)
    cap = math.ceil(balance * (total + 1) / len(group) - 1e-9)  # 2.0000000000000004 is 2
    for target in candidates:
        if load.get(target.id, 0) + 1 <= cap:
            return target
    return min(candidates, key=lambda t: load.get(t.id, 0))
