"""From a configured model to the upstreams it may call: groups of deployments.

A teacher model's id is `provider/model` (`openai/gpt-4o-mini`): the provider names a
`[teacher.providers.NAME]` table (or a built-in one), the rest is the model id that
provider knows (it may hold further slashes: `local/Qwen/Qwen2.5-7B-Instruct`). The first
group is the model's own deployments; each fallback is a group of one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from gateway.engine import ModelSpec
from gateway.errors import ConfigError
from gateway_teacher.settings import (
    EXTRA_PARAMS,
    DeploymentSpec,
    ProviderSettings,
    TeacherOptions,
    TeacherSettings,
)


@dataclass(frozen=True, slots=True)
class Target:
    """One deployment, ready to call: where, with which key, accepting which extras."""

    provider: str
    model: str
    base_url: str
    headers: Mapping[str, str]
    extra_params: frozenset[str]
    timeout: float
    max_tokens_field: str

    @property
    def id(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Group:
    """Deployments that serve the same model: a retry may land on any of them."""

    name: str
    targets: tuple[Target, ...]


def split_id(model_id: str, where: str) -> DeploymentSpec:
    """`provider/model` as a deployment; a clear ConfigError when there is no provider."""
    provider, _, model = model_id.partition("/")
    if not provider or not model:
        raise ConfigError(
            f"{where}: `{model_id}` is not a teacher model id: write `provider/model` "
            "(`openai/gpt-4o-mini`)"
        )
    return DeploymentSpec(provider=provider, model=model)


def resolve_groups(
    spec: ModelSpec, settings: TeacherSettings, environ: Mapping[str, str]
) -> list[Group]:
    """The model's groups: its deployments, then one group per fallback. Unknown providers,
    unset key variables and unknown `extra_params` are ConfigErrors naming the key."""
    where = f"models.{spec.name}"
    try:
        options = msgspec.convert(spec.options, TeacherOptions, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}.options: {exc}") from None
    own = options.deployments or [split_id(spec.source or spec.name, where)]
    providers = settings.all_providers()
    groups = [Group(spec.name, tuple(_target(d, providers, environ, where) for d in own))]
    for index, fallback in enumerate(options.fallbacks):
        place = f"{where}.options.fallbacks[{index}]"
        deployment = split_id(fallback, place)
        groups.append(Group(fallback, (_target(deployment, providers, environ, place),)))
    return groups


def _target(
    deployment: DeploymentSpec,
    providers: Mapping[str, ProviderSettings],
    environ: Mapping[str, str],
    where: str,
) -> Target:
    provider = providers.get(deployment.provider)
    if provider is None:
        known = ", ".join(sorted(providers))
        raise ConfigError(
            f"{where}: unknown teacher provider `{deployment.provider}` in "
            f"`{deployment.provider}/{deployment.model}` (providers: {known}; declare it as "
            f"[teacher.providers.{deployment.provider}])"
        )
    section = f"teacher.providers.{deployment.provider}"
    unknown = sorted(set(provider.extra_params) - EXTRA_PARAMS)
    if unknown:
        raise ConfigError(
            f"{section}.extra_params: unknown field `{unknown[0]}` "
            f"(known: {', '.join(sorted(EXTRA_PARAMS))})"
        )
    headers = {"content-type": "application/json"}
    if provider.api_key_env:
        key = environ.get(provider.api_key_env)
        if not key:
            raise ConfigError(
                f"{section}.api_key_env: the environment variable `{provider.api_key_env}` "
                f"is not set (it holds the API key of `{deployment.provider}`, which {where} uses)"
            )
        headers["authorization"] = f"Bearer {key}"
    return Target(
        provider=deployment.provider,
        model=deployment.model,
        base_url=provider.base_url.rstrip("/"),
        headers=headers,
        extra_params=frozenset(provider.extra_params),
        timeout=provider.timeout,
        max_tokens_field=provider.max_tokens_field,
    )
