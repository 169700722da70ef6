"""Running `gateway serve` as a real process for tests, and stopping it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on a free loopback port by a thread (a webhook receiver, a fake
    gateway); yields its base URL and stops it afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class LiveServer:
    def __init__(self, url: str, process: subprocess.Popen[str], log: Path):
        self.url, self.process, self.log = url, process, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    args: list[str], env: dict[str, str], log: Path, timeout: float = 600
) -> LiveServer:
    port = free_port()
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), *args],
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **env,
        },
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"gateway serve exited with {process.returncode}:\n{log.read_text()}"
            )
        try:
            reply = httpx.get(f"{url}/health", timeout=2)
        except httpx.TransportError:
            reply = None
        if reply is not None and reply.status_code == 200:
            return LiveServer(url, process, log)
        if reply is not None and "failed to load" in reply.text:
            process.kill()
            raise RuntimeError(f"a model failed to load:\n{log.read_text()}")
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"gateway serve was not ready after {timeout}s:\n{log.read_text()}")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
