"""Test helpers: an OpenAI-compatible upstream that fails on purpose, and a gateway served
by uvicorn in a thread (a real HTTP server, so streams arrive chunk by chunk).

`Upstream` answers each request with the next `Reply` of its script (then `default`):
a stream of content chunks, an error status, a hang, a broken stream, or a stream that
stops after its first chunk until the test opens `gate`. It records every request body.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from live import free_port, http_server

from gateway.app import create_app
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.settings import Settings

WAIT = 30.0
"""Seconds a blocked upstream waits at most for the test (a safety net, not a timing)."""


@dataclass
class Reply:
    """What the upstream does with one request."""

    chunks: list[str] = field(default_factory=lambda: ["Hello", " world"])
    finish: str = "stop"
    usage: tuple[int, int] | None = (7, 2)
    status: int = 200
    error: Any = None
    """The JSON body of an error status (default: OpenAI's shape with `message`)."""
    message: str = "upstream failure"
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    """Read the request, then answer nothing until the test ends."""
    cut: bool = False
    """Send the first chunk, then close the connection (no finish, no [DONE])."""
    gate: threading.Event | None = None
    """Wait for this event after the first chunk."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Streamed as `delta.tool_calls`, the arguments in two pieces each."""
    stop_reason: str | None = None


class Upstream:
    """A scripted OpenAI-compatible server; `url` is its base (`.../v1`)."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.default = Reply()
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""
        self.released = threading.Event()
        self._lock = threading.Lock()

    def next_reply(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        with self._lock:
            self.paths.append(path)
            self.requests.append(body)
            self.headers.append(headers)
            return self.script.pop(0) if self.script else self.default

    def handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                path = self.path.removeprefix("/v1")
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = upstream.next_reply(path, body, headers)
                if reply.hang:
                    upstream.released.wait(WAIT)
                    return
                if reply.status >= 400:
                    self._error(reply)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                first = True
                for content, event in events(reply, chat=path == "/chat/completions"):
                    self.wfile.write(f"data: {event}\n\n".encode())
                    self.wfile.flush()
                    if content and first:
                        first = False
                        if reply.cut:
                            self.connection.shutdown(2)
                            return
                        if reply.gate is not None and not reply.gate.wait(WAIT):
                            self.connection.shutdown(2)  # the test never saw the chunk
                            return

            def _error(self, reply: Reply) -> None:
                error = reply.error or {"error": {"message": reply.message, "type": "x"}}
                raw = json.dumps(error).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def events(reply: Reply, *, chat: bool) -> Iterator[tuple[bool, str]]:
    """The SSE data of a stream, each saying whether it is content: a role chunk (chat),
    the content chunks, the tool calls, the finish, the usage, then [DONE]."""
    base = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(choice: dict[str, Any]) -> str:
        return json.dumps({**base, "choices": [{"index": 0, "finish_reason": None, **choice}]})

    if chat:
        yield False, chunk({"delta": {"role": "assistant", "content": ""}})
    for text in reply.chunks:
        yield True, chunk({"delta": {"content": text}} if chat else {"text": text})
    for index, call in enumerate(reply.tool_calls):
        arguments = json.dumps(call["arguments"])
        half = len(arguments) // 2
        first = {"index": index, "id": f"call_{index}", "type": "function"}
        first["function"] = {"name": call["name"], "arguments": arguments[:half]}
        yield False, chunk({"delta": {"tool_calls": [first]}})
        rest = {"index": index, "function": {"arguments": arguments[half:]}}
        yield False, chunk({"delta": {"tool_calls": [rest]}})
    end: dict[str, Any] = {"finish_reason": reply.finish}
    end.update({"delta": {}} if chat else {"text": ""})
    if reply.stop_reason is not None:
        end["stop_reason"] = reply.stop_reason
    yield False, chunk(end)
    if reply.usage is not None:
        prompt, completion = reply.usage
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        yield False, json.dumps({**base, "choices": [], "usage": usage})
    yield False, "[DONE]"


@contextmanager
def upstream() -> Iterator[Upstream]:
    found = Upstream()
    with http_server(found.handler()) as url:
        found.url = f"{url}/v1"
        try:
            yield found
        finally:
            found.released.set()


def refused_url() -> str:
    """A base URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


def teacher_settings(
    data_dir: Path,
    providers: dict[str, dict[str, Any]],
    models: list[ModelSpec],
    host: dict[str, Any] | None = None,
    **teacher: Any,
) -> Settings:
    """Settings serving `models` with `[teacher]` = `teacher` and these providers (no
    backoff unless given); `host` adds the host's own keys (`api_keys`, ...)."""
    teacher.setdefault("backoff_seconds", 0.0)
    return Settings(  # type: ignore[misc]
        data_dir=str(data_dir),
        models=models,
        plugin_sections={"teacher": {"providers": providers, **teacher}},
        **(host or {}),
    )


@contextmanager
def serve(settings: Settings, exporter: Any = None) -> Iterator[str]:
    """`create_app(settings)` on a free loopback port (uvicorn in a thread), its models
    ready; yields the base URL. `exporter`: an OpenTelemetry span exporter the gateway's
    spans go to."""
    gateway = Gateway(settings)
    if exporter is not None:
        from gateway.tracing import Tracing

        gateway.tracing = Tracing.with_exporter(exporter)
    config = uvicorn.Config(
        create_app(gateway=gateway), host="127.0.0.1", port=free_port(), log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    try:
        for _ in range(600):
            if thread.is_alive() and server.started and gateway.models.all_ready:
                break
            assert thread.is_alive(), "the gateway did not start"
            threading.Event().wait(0.05)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
