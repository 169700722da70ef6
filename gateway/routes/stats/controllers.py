"""`/v1/config` and `/v1/stats/*` (see the package docstring)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency

from gateway import __version__
from gateway.engine import ModelState, memory
from gateway.gateway import Gateway
from gateway.stats import RecentRequest

SECRET = re.compile(r"(^|_)(key|secret|token|password|api_key|authorization)s?$", re.IGNORECASE)
"""Settings keys whose values `/v1/config` never shows."""
REDACTED = "***"
GIB = float(1 << 30)


def redact(value: Any, key: str = "") -> Any:
    """`value` with every secret-looking key's value replaced (at any depth)."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(item, key) for item in value]
    if value is not None and SECRET.search(key):
        return REDACTED
    return value


def engines(gateway: Gateway) -> list[dict[str, Any]]:
    """Each registered model's engine sizing (loaded ones: what the engine reports)."""
    found = []
    for handle in gateway.models:
        entry: dict[str, Any] = {
            "name": handle.name,
            "backend": handle.spec.backend,
            "state": handle.state.value,
            "options": handle.spec.options,
            "memory_bytes": handle.memory if handle.state is ModelState.READY else None,
        }
        if handle.state is ModelState.READY:
            entry["engine"] = handle.backend.health()
            stats = handle.backend.stats()
            if stats is not None:
                entry["slots"] = stats.slots
                entry["kv_cache_tokens"] = stats.cache_capacity
        found.append(entry)
    return found


class StatsController(Controller):
    path = "/v1"

    @get("/config")
    async def config(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        settings = msgspec.to_builtins(gateway.settings)
        loaded = [h for h in gateway.models if h.state is ModelState.READY]
        budget = gateway.models.limits.memory_budget
        return {
            "version": __version__,
            "settings": redact(settings),
            "models": engines(gateway),
            "memory_budget": {
                "total_ram_gb": round(memory.total() / GIB, 3),
                "available_gb": round(memory.available() / GIB, 3),
                "budget_gb": round(budget / GIB, 3) if budget is not None else None,
                "model_gb": round(sum(h.memory or 0 for h in loaded) / GIB, 3),
                "resident_gb": round(memory.resident() / GIB, 3),
            },
        }

    @get("/stats/decode")
    async def decode(self, gateway: NamedDependency[Gateway]) -> dict[str, Any]:
        return gateway.decode.summary()

    @get("/stats/recent-requests")
    async def recent(self, gateway: NamedDependency[Gateway]) -> list[RecentRequest]:
        return gateway.recent.newest_first()
