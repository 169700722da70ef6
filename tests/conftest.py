"""Fixtures: EchoBackend apps for wire tests, and a live server on the real default model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.settings import Settings

ECHO = ModelSpec(name="echo", backend="echo")


def echo_settings(**kwargs: object) -> Settings:
    kwargs.setdefault("models", [ECHO])
    return Settings(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def make_client(tmp_path: Path):
    """Build a TestClient for given settings (EchoBackend model `echo` by default)."""
    clients: list[TestClient] = []

    def make(**kwargs: object) -> TestClient:
        kwargs.setdefault("data_dir", str(tmp_path))
        client = TestClient(create_app(gateway=Gateway(echo_settings(**kwargs))))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env},
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


@pytest.fixture(scope="session")
def live_server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`gateway serve` with no config: the real default chat and embedding models."""
    log = tmp_path_factory.mktemp("live") / "server.log"
    server = start_server([], {"GATEWAY_DATA_DIR": str(data_dir)}, log)
    yield server
    stop_server(server)
