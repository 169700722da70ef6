"""Fixtures: EchoBackend apps for wire tests, and a live server on the real default model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient
from live import LiveServer, start_server, stop_server

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


@pytest.fixture(scope="session")
def live_server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`gateway serve` with no config: the real default chat and embedding models (and the
    Kobold admin routes on, which are off by default). Requests that set no token limit
    (the seeds' own examples have some) stop at 512 tokens rather than at the end of the
    context: sampled at temperature 1, a 135M model may ramble for minutes."""
    log = tmp_path_factory.mktemp("live") / "server.log"
    env = {
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_KOBOLD__ADMIN": "true",
        "GATEWAY_GENERATION__MAX_TOKENS": "512",
    }
    server = start_server([], env, log)
    yield server
    stop_server(server)
