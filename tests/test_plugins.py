"""Third-party plugins through entry points, the allowlist, and plugins that fail to load."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from gateway import PluginLoadError
from gateway import plugins as plugin_module
from gateway.app import create_app
from gateway.cli import cli
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.plugins import make_plugin_manager
from gateway.settings import Settings

ECHO_ONLY = Settings(models=[ModelSpec(name="echo", backend="echo")])


def test_installed_plugin_serves_a_model():
    pm = make_plugin_manager(environ={})
    assert pm.get_plugin("example") is not None
    with TestClient(create_app(gateway=Gateway(ECHO_ONLY, pm))) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert "example-shout" in ids
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": "example-shout",
                "messages": [{"role": "user", "content": "quiet please"}],
            },
        )
        assert response.json()["choices"][0]["message"]["content"] == "QUIET PLEASE"


@pytest.mark.parametrize("allow", ["", "torch", "someone-else"])
def test_allowlist_excludes_it(allow):
    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": allow})
    assert pm.get_plugin("example") is None
    with TestClient(create_app(gateway=Gateway(ECHO_ONLY, pm))) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["echo"]
        response = client.post(
            "/v1/chat/completions",
            json={"model": "example-shout", "messages": [{"role": "user", "content": "x"}]},
        )
        assert response.status_code == 404


def test_allowlist_admits_it():
    pm = make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": "example"})
    assert pm.get_plugin("example") is not None
    assert pm.get_plugin("torch") is None


def test_a_plugin_that_fails_to_load_stops_startup_with_its_name(monkeypatch):
    broken = EntryPoint(name="broken-plugin", value="gateway_no_such_module", group="gateway")
    monkeypatch.setattr(plugin_module, "entry_points", lambda group: [broken])
    with pytest.raises(PluginLoadError, match="plugin `broken-plugin`"):
        make_plugin_manager(environ={})
    result = CliRunner().invoke(cli, ["plugins"])  # the CLI builds its own manager: same error
    assert result.exit_code != 0
    assert "broken-plugin" in str(result.exception) + result.output


def test_plugins_command_lists_distribution_and_hooks():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    plugins = {p["name"]: p for p in json.loads(result.output)}
    assert plugins["example"]["distribution"] == "gateway-example-backend 0.1.0"
    assert plugins["example"]["hooks"] == [
        "register_backends",
        "register_models",
        "register_rewards",
        "register_trainers",
    ]
    assert plugins["torch"]["distribution"].startswith("gateway-torch ")
    assert "register_routes" in plugins["gateway.routes.openai"]["hooks"]


def test_plugin_modules_import_no_heavy_libraries():
    import subprocess
    import sys

    code = (
        "import sys, gateway_torch.plugin, gateway.app\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_trace_switch_logs_hook_calls(caplog):
    pm = make_plugin_manager(environ={"GATEWAY_TRACE_PLUGINS": "1", "GATEWAY_LOAD_PLUGINS": ""})
    with caplog.at_level("INFO", logger="gateway.plugins"):
        Gateway(ECHO_ONLY, pm)
    assert any("register_models" in r.getMessage() for r in caplog.records)
