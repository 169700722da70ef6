"""The gateway plugin: declares `[teacher]` and registers the `teacher` backend.

Importing this module stays light: aiohttp is imported when a teacher model is built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import hookimpl
from gateway_teacher.settings import TeacherSettings

if TYPE_CHECKING:
    from gateway.engine import Backend, BackendFactory, ModelSpec
    from gateway.settings import Settings


def teacher_factory(settings: TeacherSettings) -> BackendFactory:
    """The factory of `teacher` models under `settings`. Its models share one table of
    cooldowns, so a deployment that fails for one model is skipped by the others."""
    from gateway_teacher.router import Cooldowns

    cooldowns = Cooldowns()

    def build(spec: ModelSpec, data_dir: Path) -> Backend:
        from gateway_teacher.backend import TeacherBackend

        return TeacherBackend(spec, data_dir, settings, cooldowns=cooldowns)

    return build


@hookimpl
def register_settings(register: Callable[[str, type[Any]], None]) -> None:
    register("teacher", TeacherSettings)


@hookimpl
def register_backends(register: Callable[[str, BackendFactory], None], settings: Settings) -> None:
    register("teacher", teacher_factory(settings.section("teacher", TeacherSettings)))
