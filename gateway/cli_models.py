"""`gateway models ...`: the registered models, and loading and unloading them on a
running server (the model manager's NPU-STACK routes, `admin` scope for changes).

`gateway models` alone (or `gateway models list`) lists the configured models with their
state when a server answers; `load NAME`, `unload NAME [--abort]` and `status` talk to
the server at `--url` with `--api-key`, as `gateway train` does.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from gateway.cli_http import AS_JSON, client, echo_json, server_options
from gateway.errors import ConfigError
from gateway.settings import Settings, load_settings

CONFIG = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="gateway.toml to read",
)
MIB = 1 << 20


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _live_states(settings: Settings) -> dict[str, str]:
    url = f"http://{settings.server.host}:{settings.server.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    except OSError:
        return {}
    return {m["name"]: m["state"] for m in body.get("models", [])}


def _list(config: Path | None, as_json: bool) -> None:
    settings = _settings(config)
    live = _live_states(settings)
    rows = [
        {
            "name": spec.name,
            "backend": spec.backend,
            "source": spec.source,
            "state": live.get(spec.name, "not running" if not live else "unknown"),
        }
        for spec in settings.served_models()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']:<28} {row['backend']:<18} {row['state']:<12} {row['source']}")


@click.group(invoke_without_command=True)
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def models(ctx: click.Context, config: Path | None, as_json: bool) -> None:
    """List configured models, with their state when a server is running; load, unload
    and show the status of a running server's models."""
    if ctx.invoked_subcommand is None:
        _list(config, as_json)


@models.command("list")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_models(config: Path | None, as_json: bool) -> None:
    """List configured models, with their state when a server is running."""
    _list(config, as_json)


def _mib(value: Any) -> str:
    return f"{value / MIB:.0f} MiB" if isinstance(value, int) else "-"


@models.command()
@click.argument("name")
@AS_JSON
@server_options
def load(name: str, as_json: bool) -> None:
    """Load NAME (evicting the least recently used models it needs room from)."""
    answer = client().call("POST", "/v1/models/load", {"name": name})
    if as_json:
        echo_json(answer)
        return
    click.echo(
        f"Loaded {name} in {answer.get('load_seconds') or 0:.2f} s "
        f"({_mib(answer.get('memory_bytes'))} resident)."
    )


@models.command()
@click.argument("name")
@click.option("--abort", is_flag=True, help="cancel its requests in flight instead of waiting")
@AS_JSON
@server_options
def unload(name: str, abort: bool, as_json: bool) -> None:
    """Unload NAME once its requests in flight end (or now, with --abort)."""
    answer = client().call("POST", "/v1/models/unload", {"name": name, "abort": abort})
    if as_json:
        echo_json(answer)
        return
    click.echo(f"Unloaded {name} ({_mib(answer.get('freed_bytes'))} freed).")


@models.command()
@AS_JSON
@server_options
def status(as_json: bool) -> None:
    """Each registered model's state, memory, uptime and requests served."""
    answer = client().call("GET", "/v1/models/status")
    if as_json:
        echo_json(answer)
        return
    limit = answer.get("max_loaded") or "no limit"
    click.echo(
        f"{answer.get('loaded')} loaded (max_loaded: {limit}); resident "
        f"{_mib(answer.get('resident_bytes'))}, available {_mib(answer.get('available_bytes'))}"
    )
    for row in answer.get("models", []):
        uptime = row.get("uptime_seconds")
        click.echo(
            f"{row['name']:<28} {row['state']:<10} {row['backend']:<18} "
            f"{_mib(row.get('memory_bytes')):>9} "
            f"{'pinned' if row.get('pinned') else '':<6} "
            f"up {uptime if uptime is not None else '-':>7} s  "
            f"{row.get('requests_served', 0)} served"
        )
