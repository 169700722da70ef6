"""The plugin manager: built-in plugins, entry points, the GATEWAY_LOAD_PLUGINS allowlist.

Each call of `make_plugin_manager` builds a fresh manager: nothing here is module state.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from gateway import hookspecs
from gateway.errors import PluginLoadError

log = logging.getLogger("gateway.plugins")

ENTRY_POINT_GROUP = "gateway"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "gateway.auth",
    "gateway.routes.health",
    "gateway.routes.metrics",
    "gateway.routes.models",
    "gateway.routes.stats",
    "gateway.routes.openai",
    "gateway.routes.llamacpp",
    "gateway.routes.kobold",
    "gateway.routes.adapters",
    "gateway.routes.training",
    "gateway.routes.distillation",
    "gateway.routes.ui",
    "gateway.recording.plugin",
    "gateway.testing.plugin",
)


class GatewayPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution shipped each plugin."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, str] = {}


def make_plugin_manager(environ: Mapping[str, str] | None = None) -> GatewayPluginManager:
    """Built-ins first, then every `gateway` entry point the allowlist admits.

    `GATEWAY_LOAD_PLUGINS=a,b` loads only the entry points named a and b; set but empty,
    it loads none. `GATEWAY_TRACE_PLUGINS=1` logs every hook call.
    """
    env = os.environ if environ is None else environ
    pm = GatewayPluginManager()
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    allow = _allowlist(env)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if allow is not None and ep.name not in allow:
            continue
        if pm.get_plugin(ep.name) is None:
            _load(pm, ep)
    if env.get("GATEWAY_TRACE_PLUGINS"):
        pm.trace.root.setwriter(log.info)
        pm.enable_tracing()
    return pm


def _allowlist(env: Mapping[str, str]) -> set[str] | None:
    raw = env.get("GATEWAY_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _load(pm: GatewayPluginManager, ep: EntryPoint) -> None:
    try:
        pm.register(ep.load(), name=ep.name)
    except Exception as exc:
        raise PluginLoadError(
            f"plugin `{ep.name}` ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    pm.distributions[ep.name] = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown"


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Each plugin, the distribution that ships it, and the hooks it implements."""
    dists = getattr(pm, "distributions", {})
    return [
        {
            "name": name,
            "distribution": dists.get(name, "gateway (built-in)"),
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        }
        for name, plugin in pm.list_name_plugin()
    ]
