"""The `gateway` command line."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gateway.cli import cli


def test_models_lists_configured_models_and_their_state(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nport = 1\n[[models]]\nname = "echo"\nbackend = "echo"\n')
    result = CliRunner().invoke(cli, ["models", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [
        {"name": "echo", "backend": "echo", "source": "", "state": "not running"}
    ]


def test_models_default(tmp_path):
    result = CliRunner().invoke(cli, ["models"], env={"GATEWAY_PORT": "1"})
    assert result.exit_code == 0
    assert "smollm2-135m-instruct" in result.output
    assert "all-minilm-l6-v2" in result.output


def test_invalid_config_is_refused_with_key_and_reason(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nport = "x"\n')
    result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert result.exit_code != 0
    assert "$.server.port" in result.output
    assert "Expected `int`" in result.output


def test_unknown_route_family_is_refused_at_serve(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('[routes]\nkobolt = true\n[[models]]\nname = "echo"\nbackend = "echo"\n')
    result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert result.exit_code != 0
    assert "routes.kobolt" in result.output


def test_routes_lists_each_route_with_its_scope_and_origins(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n[routes]\ntraining = false\n'
        '[[models]]\nname = "echo"\nbackend = "echo"\n'
    )
    result = CliRunner().invoke(cli, ["routes", "--config", str(config)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    shutdown = next(line for line in lines if "/api/extra/shutdown" in line).split()
    assert shutdown == ["kobold", "POST", "/api/extra/shutdown", "admin", "private_origins"]
    health = next(line for line in lines if line.split()[2:3] == ["/health"]).split()
    assert health[3:] == ["public", "origins"]
    assert not any("/v1/train" in line for line in lines)  # the family is off
    markdown = CliRunner().invoke(cli, ["routes", "--config", str(config), "--markdown"])
    assert "| kobold | `POST /api/extra/shutdown` | `admin` | `[cors] private_origins` |" in (
        markdown.output
    )
