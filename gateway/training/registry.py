"""Collecting the trainers that plugins register."""

from __future__ import annotations

import pluggy

from gateway.errors import ConfigError
from gateway.training.trainer import Trainer


def collect_trainers(pm: pluggy.PluginManager) -> dict[str, Trainer]:
    """Every registered trainer by name; a name registered twice is a ConfigError."""
    trainers: dict[str, Trainer] = {}
    owners: dict[str, str] = {}
    for impl in reversed(pm.hook.register_trainers.get_hookimpls()):

        def register(trainer: Trainer, _owner: str = impl.plugin_name) -> None:
            name = trainer.name
            if name in trainers:
                raise ConfigError(
                    f"trainer `{name}` is registered by both `{owners[name]}` and `{_owner}`"
                )
            trainers[name], owners[name] = trainer, _owner

        impl.function(register=register)
    return trainers
