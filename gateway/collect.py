"""Collecting what plugins register at start-up: backend factories and settings sections.

Both the server (`Gateway`) and a training worker process call these, so a backend that a
job needs (a distillation job's teacher) is built the same way in either.
"""

from __future__ import annotations

from typing import Any

import pluggy

from gateway.engine.backend import BackendFactory
from gateway.errors import ConfigError
from gateway.settings import Settings


def collect_sections(pm: pluggy.PluginManager) -> dict[str, type[Any]]:
    """The settings sections plugins declare (`register_settings`), by table name."""
    sections: dict[str, type[Any]] = {}
    owners: dict[str, str] = {}
    own = set(Settings.__struct_fields__)
    for impl in reversed(pm.hook.register_settings.get_hookimpls()):

        def register(name: str, kind: type[Any], _owner: str = impl.plugin_name) -> None:
            if name in own:
                raise ConfigError(f"plugin `{_owner}` declares `[{name}]`, a host section")
            if name in sections:
                raise ConfigError(
                    f"settings section `[{name}]` is declared by both `{owners[name]}` "
                    f"and `{_owner}`"
                )
            sections[name], owners[name] = kind, _owner

        impl.function(register=register)
    return sections


def collect_backends(pm: pluggy.PluginManager, settings: Settings) -> dict[str, BackendFactory]:
    """Every registered backend factory by name; a name registered twice is a ConfigError."""
    factories: dict[str, BackendFactory] = {}
    owners: dict[str, str] = {}
    for impl in reversed(pm.hook.register_backends.get_hookimpls()):

        def register(name: str, factory: BackendFactory, _owner: str = impl.plugin_name) -> None:
            if name in factories:
                raise ConfigError(
                    f"backend `{name}` is registered by both `{owners[name]}` and `{_owner}`"
                )
            factories[name], owners[name] = factory, _owner

        offered = {"register": register, "settings": settings}
        impl.function(**{name: offered[name] for name in impl.argnames if name in offered})
    return factories
