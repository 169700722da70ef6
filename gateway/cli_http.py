"""Talking to a running gateway from the command line: JSON over HTTP (stdlib only), its
error answers as click errors, and the `--url` / `--api-key` options.

An error answer is shown with its message and code (Kiln's and OpenAI's envelope
`{"error": {"code", "message"}}`, FastAPI's `{"detail"}`, or plain text), and the command
exits 1. `--url` defaults to the settings' `[server]` host and port; `--api-key` to
`GATEWAY_API_KEY`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import click

from gateway.errors import ConfigError
from gateway.settings import load_settings

API_KEY_ENV = "GATEWAY_API_KEY"
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
CLIENT_OPTIONS = "gateway.client_options"


class ServerError(click.ClickException):
    """An error answer: its status, its code (when the body has one) and its message."""

    def __init__(self, status: int, message: str, code: str | None = None):
        self.status, self.code = status, code
        where = f"HTTP {status}" + (f", {code}" if code else "")
        super().__init__(f"{message} ({where})")


def error_of(status: int, raw: bytes) -> ServerError:
    """The error an answer's body describes: Kiln's/OpenAI's `{"error": {"code",
    "message", "hint"}}`, FastAPI's `{"detail"}`, or its text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return ServerError(status, text or "(no message)")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        message = str(error.get("message") or "(no message)")
        if error.get("hint"):
            message += f"\nHint: {error['hint']}"
        return ServerError(status, message, error.get("code") or error.get("type"))
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return ServerError(status, detail if isinstance(detail, str) else json.dumps(detail))
    return ServerError(status, text)


class Client:
    """JSON over HTTP to one gateway."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str | None] | None = None,
    ) -> Any:
        """The decoded JSON answer; an error answer raises `ServerError`."""
        url = self.url + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise error_of(exc.code, exc.read()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise click.ClickException(
                f"Cannot reach the gateway at {self.url}: {reason}. Is `gateway serve` "
                "running there? (--url)"
            ) from None
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            raise click.ClickException(
                f"The gateway at {self.url} answered {method} {path} with something that is "
                "not JSON."
            ) from None


def default_url() -> str:
    """`http://host:port` of the settings' `[server]` (a wildcard host as 127.0.0.1)."""
    try:
        server = load_settings().server
    except ConfigError as exc:
        raise click.ClickException(f"{exc} (or give --url)") from None
    host = "127.0.0.1" if server.host in WILDCARD_HOSTS else server.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{server.port}"


def quoted(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--url` and `--api-key`, handed to the command as `client`."""

    def remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        ctx.meta.setdefault(CLIENT_OPTIONS, {})[param.name] = value

    command = click.option(
        "--api-key",
        envvar=API_KEY_ENV,
        help=f"API key, sent as a bearer token (default: ${API_KEY_ENV})",
        expose_value=False,
        callback=remember,
    )(command)
    command = click.option(
        "--url",
        help="the gateway's address (default: the settings' server host and port)",
        expose_value=False,
        callback=remember,
    )(command)
    return command


def client() -> Client:
    options = click.get_current_context().meta.get(CLIENT_OPTIONS, {})
    return Client(options.get("url") or default_url(), options.get("api_key"))


MODEL = click.option("--model", help="the served model (default: the first that takes adapters)")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="print the server's JSON")


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))
