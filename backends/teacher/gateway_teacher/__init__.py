"""gateway-teacher: a backend that forwards generations to OpenAI-compatible APIs.

`[[models]] backend = "teacher"` with a `provider/model` id; providers, retries, cooldowns
and prices come from the `[teacher]` settings section (see `gateway_teacher.settings`).
"""

from gateway_teacher.settings import (
    DeploymentSpec,
    Price,
    ProviderSettings,
    TeacherOptions,
    TeacherSettings,
)

__all__ = ["DeploymentSpec", "Price", "ProviderSettings", "TeacherOptions", "TeacherSettings"]
