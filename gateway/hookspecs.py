"""The plugin contract of the gateway.

A plugin is a module (or object) with functions marked `@gateway.hookimpl` whose names
match the specs below. Built-in features are plugins of these same hooks. Hooks that
register things are called once at start-up and hand typed objects to a `register`
callback; per-request hooks are called once per request, never per token.

Every hook is documented in docs/plugin_hooks.md and tested in tests/test_hooks.py;
a test fails when one is missing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from gateway_schemas.canonical import GenerationChunk, GenerationRequest
    from litestar import Request

    from gateway.auth import Actor
    from gateway.distillation.reward import Reward
    from gateway.engine import BackendFactory, ModelSpec
    from gateway.gateway import Gateway
    from gateway.routes.family import RouteFamily
    from gateway.settings import Settings
    from gateway.training.trainer import Trainer

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")


@hookspec
def register_backends(register: Callable[[str, BackendFactory], None], settings: Settings) -> None:
    """Register backend factories by name: `register("torch", factory)`.

    Called once at start-up (in the server, and in a training worker that needs a model
    of its own, such as a distillation job's teacher). `factory(spec: ModelSpec, data_dir:
    Path) -> Backend` is called for each configured model whose `backend` is that name.
    `settings` are the gateway's settings: a backend reads its plugin's section with
    `settings.section(name, Type)`. A name registered twice stops start-up with both
    plugins named.
    """


@hookspec
def register_settings(register: Callable[[str, type[Any]], None]) -> None:
    """Declare a settings section of the plugin: `register("teacher", TeacherSettings)`.

    Called once at start-up. `TeacherSettings` is a msgspec Struct; the section is the
    `[teacher]` table of gateway.toml (and `GATEWAY_TEACHER__...` variables). The host
    validates every declared section at start-up and refuses a section nobody declared;
    plugins read theirs with `settings.section("teacher", TeacherSettings)`.
    """


@hookspec
def register_trainers(register: Callable[[Trainer], None]) -> None:
    """Register trainers (job kinds such as `sft`, `grpo`): `register(MyTrainer())`.

    Called once at start-up in the server (which checks submissions with `check`) and in
    each training worker process (which calls `run`). A name registered twice stops
    start-up with both plugins named.
    """


@hookspec
def register_rewards(register: Callable[[Reward], None]) -> None:
    """Register rewards that score a distillation job's candidates instead of its judge:
    `register(MyReward())`, named by a job's `config.reward`.

    Called once at start-up in the server (to check submissions) and in each training
    worker (which calls `score`). A name registered twice stops start-up.
    """


@hookspec
def register_models(register: Callable[[ModelSpec], None], gateway: Gateway) -> None:
    """Declare models in addition to those of `[[models]]` in the settings.

    Called once at start-up, after `register_backends`. A model name that is already
    declared stops start-up.
    """


@hookspec
def register_routes(register: Callable[[RouteFamily], None], gateway: Gateway) -> None:
    """Register route families: `register(RouteFamily(name, router, ...))`.

    Called once when the app is created. A family is mounted unless `[routes]` in the
    settings switches it off (`openai = false`); an unmounted family answers 404.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the `gateway` command-line tool (a click group)."""


@hookspec
def startup(gateway: Gateway) -> Awaitable[None] | None:
    """Called once when the server starts, before it accepts requests.

    May return an awaitable, which the host awaits. Models start loading after this hook,
    in the background.
    """


@hookspec
def shutdown(gateway: Gateway) -> Awaitable[None] | None:
    """Called once when the server stops, after the last request. May return an awaitable."""


@hookspec
def actor_from_request(gateway: Gateway, request: Request[Any, Any, Any]) -> Actor | None:
    """Who is making this request? Return an `Actor`, or None to leave it to other plugins.

    Called once per request (not for /health). Results combine first-non-None in plugin
    order; the built-in plugin reads API keys from `Authorization: Bearer ...`. An
    implementation raises `AuthenticationFailed` for credentials it recognises as bad.
    """


@hookspec
def permission_allowed(gateway: Gateway, actor: Actor | None, scope: str) -> bool | None:
    """May `actor` (None when anonymous) use a route that needs `scope`?

    Called once per request. Any False denies; otherwise any True allows; when every
    plugin returns None the request is denied. The built-in plugin allows everything when
    no keys are configured, and otherwise checks the key's scopes.
    """


@hookspec
def prepare_generation(gateway: Gateway, request: GenerationRequest) -> GenerationRequest | None:
    """Inspect or rewrite a canonical generation request before it reaches the backend.

    Called once per generation, in plugin order; each non-None result replaces the request
    seen by the next plugin. Raise a `GatewayError` to refuse the request.
    """


@hookspec
def generation_finished(
    gateway: Gateway, request: GenerationRequest, final: GenerationChunk
) -> Awaitable[None] | None:
    """Called once when a generation ends (any finish reason) with its last chunk.

    `final.usage` and `final.timings` describe it. May return an awaitable. Exceptions are
    logged, never shown to the client.
    """
