"""The `gateway` command: serve, plugins, models, routes, and what plugins add."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from gateway import __version__
from gateway.cli_models import models
from gateway.cli_training import adapters, train
from gateway.errors import ConfigError
from gateway.plugins import describe_plugins, make_plugin_manager
from gateway.settings import Settings, load_settings

CONFIG = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="gateway.toml to read",
)


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(__version__, prog_name="gateway")
def cli() -> None:
    """One server for every local-LLM API dialect."""


@cli.command()
@CONFIG
@click.option("--host", help="address to listen on (default 127.0.0.1)")
@click.option("--port", type=int, help="port to listen on (default 8000)")
@click.option("--model", help="serve only this model: a declared name, or a GGUF/HF folder/package")
def serve(config: Path | None, host: str | None, port: int | None, model: str | None) -> None:
    """Serve the configured models (by default SmolLM2-135M-Instruct and all-MiniLM-L6-v2)."""
    import uvicorn

    from gateway.app import GatewayPlugin, create_app
    from gateway.gateway import Gateway

    started = time.perf_counter()
    settings = _settings(config, **{"server.host": host, "server.port": port, "model": model})
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        gateway = Gateway(settings)
        app = create_app(gateway=gateway)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    plugin = app.plugins.get(GatewayPlugin)
    url = f"http://{settings.server.host}:{settings.server.port}"
    click.echo(f"gateway {__version__} listening on {url}")
    click.echo(f"route families mounted: {', '.join(sorted(f.name for f in plugin.mounted))}")
    if settings.family_enabled("ui"):
        click.echo(f"dashboard: {url}/ui")
    click.echo(f"models: {', '.join(f'{h.spec.name} ({h.spec.backend})' for h in gateway.models)}")
    click.echo(f"data directory: {settings.data_path()}")
    click.echo(f"app built in {time.perf_counter() - started:.2f}s; models load in the background")
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=5,
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def plugins(as_json: bool) -> None:
    """List loaded plugins, the distribution of each, and its hooks."""
    try:
        described = describe_plugins(make_plugin_manager())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for plugin in described:
        click.echo(f"{plugin['name']}  [{plugin['distribution']}]")
        click.echo(f"    hooks: {', '.join(plugin['hooks'])}")


@cli.command()
@CONFIG
@click.option("--markdown", is_flag=True, help="print the Markdown table of docs/access.md")
def routes(config: Path | None, markdown: bool) -> None:
    """List the mounted routes with the API-key scope and browser origins each admits."""
    from gateway.app import GatewayPlugin, create_app
    from gateway.gateway import Gateway
    from gateway.routes.access import render_markdown

    try:
        plugin = create_app(gateway=Gateway(_settings(config))).plugins.get(GatewayPlugin)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if markdown:
        click.echo(render_markdown(plugin.access), nl=False)
        return
    for row in sorted(plugin.access.rows(), key=lambda r: (r.family, r.path, r.method)):
        scope = row.access.scope or "public"
        origins = "private_origins" if row.access.private else "origins"
        click.echo(f"{row.family:<13} {row.method:<7} {row.path:<42} {scope:<10} {origins}")


cli.add_command(train)
cli.add_command(adapters)
cli.add_command(models)


def main() -> None:
    try:
        pm = make_plugin_manager()
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    pm.hook.register_commands(cli=cli)
    cli(prog_name="gateway")


if __name__ == "__main__":
    main()
