"""Every hookspec is documented and has a test here; each hook is exercised for real."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
import msgspec
import pytest
from click.testing import CliRunner
from litestar import Router, get
from litestar.testing import TestClient

from gateway import InvalidRequest, hookimpl, hookspecs
from gateway.app import create_app
from gateway.auth import Actor
from gateway.engine import ModelSpec
from gateway.errors import ConfigError
from gateway.gateway import Gateway
from gateway.plugins import make_plugin_manager
from gateway.routes.access import SERVE
from gateway.routes.family import RouteFamily
from gateway.settings import ApiKey, Settings
from gateway.testing import EchoBackend
from gateway.training.registry import collect_trainers
from gateway.training.trainer import JobStopped, Trainer, TrainingContext

DOCS = Path(__file__).parents[1] / "docs" / "plugin_hooks.md"
HOOKS = sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "gateway_spec"))


def test_every_hook_is_documented_and_tested():
    assert len(HOOKS) >= 10
    documented = set(re.findall(r"^## `(\w+)`$", DOCS.read_text(), re.M))
    tests = {name for name in vars(sys.modules[__name__]) if name.startswith("test_hook_")}
    for name in HOOKS:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert name in documented, f"{name} has no section in docs/plugin_hooks.md"
        assert f"test_hook_{name}" in tests, f"{name} has no test_hook_{name}"


def app_with(plugin: object, **settings: object) -> TestClient:
    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""})
    pm.register(plugin, name="test-plugin")
    settings.setdefault("models", [ModelSpec(name="echo", backend="echo")])
    return TestClient(create_app(gateway=Gateway(Settings(**settings), pm)))


def chat(client: TestClient, text: str = "hello", **headers: str):
    return client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": text}]},
        headers=headers,
    )


def test_hook_register_backends():
    class Upper(EchoBackend):
        async def render_chat(self, messages):
            return "x"

    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register("upper", lambda spec, data_dir: Upper(spec, data_dir))

    with app_with(Plugin(), models=[ModelSpec(name="echo", backend="upper")]) as client:
        assert chat(client).json()["usage"]["prompt_tokens"] == 1  # the plugin's render_chat

    class Clash:
        @hookimpl
        def register_backends(self, register):
            register("echo", lambda spec, data_dir: EchoBackend(spec, data_dir))

    with pytest.raises(Exception, match="backend `echo` is registered by both"):
        app_with(Clash())


def test_hook_register_settings():
    class Section(msgspec.Struct, forbid_unknown_fields=True):
        greeting: str = "hello"
        times: int = 1

    class Plugin:
        @hookimpl
        def register_settings(self, register):
            register("shouty", Section)

        @hookimpl
        def register_backends(self, register, settings):
            section = settings.section("shouty", Section)

            class Shouty(EchoBackend):
                async def render_chat(self, messages, tools=()):
                    return " ".join([section.greeting] * section.times)

            register("shouty", lambda spec, data_dir: Shouty(spec, data_dir))

    from gateway.settings import load_settings

    settings = load_settings(
        environ={"GATEWAY_SHOUTY__TIMES": "3"}, overrides={"shouty.greeting": "hey"}
    )
    assert settings.plugin_sections == {"shouty": {"greeting": "hey", "times": 3}}
    models = [ModelSpec(name="echo", backend="shouty")]
    with app_with(Plugin(), models=models, plugin_sections=settings.plugin_sections) as client:
        assert chat(client).json()["usage"]["prompt_tokens"] == len("hey hey hey")

    with pytest.raises(ConfigError, match=r"\[shouty\]: .*times"):
        app_with(Plugin(), models=models, plugin_sections={"shouty": {"times": "x"}})
    with pytest.raises(ConfigError, match=r"unknown section or key `shuoty`.*\[shouty\]"):
        app_with(Plugin(), models=models, plugin_sections={"shuoty": {}})

    class Clash:
        @hookimpl
        def register_settings(self, register):
            register("training", Section)

    with pytest.raises(ConfigError, match=r"declares `\[training\]`, a host section"):
        app_with(Clash())


def test_hook_register_rewards():
    from gateway.distillation.reward import Reward, collect_rewards

    class Length(Reward):
        name = "length"

        def score(self, messages, responses):
            return [min(len(r) / 10, 1.0) for r in responses]

    class Plugin:
        @hookimpl
        def register_rewards(self, register):
            register(Length())

    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""})
    pm.register(Plugin(), name="one")
    rewards = collect_rewards(pm)
    assert rewards["length"].score([{"role": "user", "content": "hi"}], ["abc", "x" * 20]) == [
        0.3,
        1.0,
    ]
    pm.register(Plugin(), name="two")
    with pytest.raises(ConfigError, match="reward `length` is registered by both"):
        collect_rewards(pm)


def test_hook_register_models():
    class Plugin:
        @hookimpl
        def register_models(self, register, gateway):
            register(ModelSpec(name="extra", backend="echo"))

    with app_with(Plugin()) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["echo", "extra"]


def test_hook_register_routes():
    @get("/hello", opt={"family": "hello"})
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    class Plugin:
        @hookimpl
        def register_routes(self, register, gateway):
            router = Router(path="/", route_handlers=[hello])
            register(RouteFamily("hello", router, access={"GET /hello": SERVE}))

    with app_with(Plugin()) as client:
        assert client.get("/hello").json() == {"hello": "world"}
    with app_with(Plugin(), routes={"hello": False}) as client:
        assert client.get("/hello").status_code == 404


def test_hook_register_commands():
    class Plugin:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def hello():
                click.echo("hello from a plugin")

    from gateway.cli import cli

    group = click.Group(commands=dict(cli.commands))
    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""})
    pm.register(Plugin())
    pm.hook.register_commands(cli=group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.output == "hello from a plugin\n"


def test_hook_register_trainers(tmp_path):
    class CountingTrainer(Trainer):
        name = "counting"

        def check(self, data, config):
            if not data:
                raise InvalidRequest("Give at least one example.", param="examples")

        def run(self, job, context):
            for step in range(1, 4):
                context.step(step, 3, loss=1.0 / step, learning_rate=1e-4, epoch=1.0)
            return tmp_path

    class Plugin:
        @hookimpl
        def register_trainers(self, register):
            register(CountingTrainer())

    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""})
    pm.register(Plugin(), name="counting-plugin")
    trainers = collect_trainers(pm)
    trainer = trainers["counting"]
    assert isinstance(trainer, CountingTrainer)
    with pytest.raises(InvalidRequest, match="at least one example"):
        trainer.check([], {})

    steps: list[tuple[int, int, float]] = []

    def on_step(step, total, loss, lr, epoch):
        steps.append((step, total, loss))
        return step < 2  # stopped after step 2

    context = TrainingContext(
        spec=ModelSpec(name="echo", backend="echo"),
        data_dir=tmp_path,
        adapters=None,  # type: ignore[arg-type]  # this trainer writes no adapter
        resident={},
        threads=1,
        on_step=on_step,
        on_log=lambda message: None,
    )
    with pytest.raises(JobStopped):
        trainer.run(None, context)
    assert steps == [(1, 3, 1.0), (2, 3, 0.5)]

    class Clash:
        @hookimpl
        def register_trainers(self, register):
            register(CountingTrainer())

    pm.register(Clash(), name="clash-plugin")
    with pytest.raises(ConfigError) as refused:
        collect_trainers(pm)
    message = str(refused.value)
    assert "trainer `counting` is registered by both" in message
    assert "counting-plugin" in message and "clash-plugin" in message


def test_hook_startup():
    seen = []

    class Plugin:
        @hookimpl
        def startup(self, gateway):
            async def later():
                seen.append(("startup", len(gateway.models)))

            return later()

    with app_with(Plugin()):
        assert seen == [("startup", 1)]


def test_hook_shutdown():
    seen = []

    class Plugin:
        @hookimpl
        def shutdown(self, gateway):
            seen.append("shutdown")

    with app_with(Plugin()):
        assert seen == []
    assert seen == ["shutdown"]


def test_hook_actor_from_request():
    class Plugin:
        @hookimpl
        def actor_from_request(self, gateway, request):
            if request.headers.get("x-team") == "blue":
                return Actor(id="blue-team", scopes=frozenset({"inference"}))
            return None

    keys = [ApiKey(key="a-real-key-1", scopes=["inference"])]
    with app_with(Plugin(), api_keys=keys) as client:
        assert chat(client).status_code == 401
        assert chat(client, **{"x-team": "blue"}).status_code == 200
        assert chat(client, Authorization="Bearer a-real-key-1").status_code == 200


def test_hook_permission_allowed():
    class Plugin:
        @hookimpl
        def permission_allowed(self, gateway, actor, scope):
            return False if scope == "admin" else None

    with app_with(Plugin()) as client:  # no keys: open, except what the plugin denies
        assert chat(client).status_code == 200
        assert client.get("/metrics").status_code == 401


def test_hook_prepare_generation():
    class Plugin:
        @hookimpl
        def prepare_generation(self, gateway, request):
            if request.messages and request.messages[-1].content == "forbidden":
                raise InvalidRequest("That topic is off limits.", param="messages")
            return msgspec.structs.replace(request, max_tokens=2)

    with app_with(Plugin()) as client:
        body = chat(client, "hello").json()
        assert body["choices"][0]["message"]["content"] == "he"
        refused = chat(client, "forbidden")
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == "That topic is off limits."


def test_hook_generation_finished():
    finished = []

    class Plugin:
        @hookimpl
        def generation_finished(self, gateway, request, final):
            finished.append((request.model, final.finish_reason, final.usage.completion_tokens))
            raise RuntimeError("a broken hook must not reach the client")

    with app_with(Plugin()) as client:
        assert chat(client, "abc").status_code == 200
    assert finished == [("echo", "stop", 3)]
