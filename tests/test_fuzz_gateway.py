"""The gateway's own OpenAPI document (every mounted route of every family) fuzzed with
schemathesis in positive mode against a live server on the real model: no answer is a
server error, and when the run is over no engine slot is left busy.

The client gives each request a short timeout: a generation that a fuzzed body lets run
long is abandoned, as impatient clients do, and must free its slot (see
test_disconnects.py). The server gets a data directory of its own (story saves, slot
files), sharing only the converted model with the other live servers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from live import LiveServer, start_server, stop_server
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from gateway.app import create_app
from gateway.settings import load_settings

EXAMPLES = 3
CLIENT_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def fuzz_server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "models").symlink_to((data_dir / "models").resolve(), target_is_directory=True)
    env = {"GATEWAY_DATA_DIR": str(folder)}
    server = start_server([], env, folder / "server.log")
    yield server
    stop_server(server)


def _document() -> dict[str, Any]:
    """The OpenAPI document `gateway serve` publishes with its default settings (built
    in-process: the same app, not started)."""
    app = create_app(load_settings(environ={}))
    return app.openapi_schema.to_schema()


schema = schemathesis.openapi.from_dict(_document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE], max_examples=EXAMPLES, deterministic=True
)
# The coverage phase sends dozens of boundary bodies per operation: minutes of generation
# on the real model. Random positive examples cover every operation here; the Kobold
# family's own document gets the coverage phase against the echo backend.
schema.config.phases.coverage.enabled = False


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_route_answers_a_server_error(case, fuzz_server):
    response = _call(case.as_transport_kwargs(base_url=fuzz_server.url))
    if response is None or _documented_refusal(response):
        return
    case.validate_response(response, checks=[not_a_server_error])


def _documented_refusal(response: requests.Response) -> bool:
    """llama-server's 501 `not_supported_error` for what the model lacks (`/infill` without
    fill-in-the-middle tokens): the documented answer, not a failure of the server."""
    if response.status_code != 501:
        return False
    return bool(response.json().get("error", {}).get("type") == "not_supported_error")


def _call(kwargs: dict[str, Any]) -> requests.Response | None:
    """The whole answer within CLIENT_TIMEOUT, or None: then the client hangs up (one try,
    no retries), as an impatient client does, and the request's slot must come free."""
    deadline = time.monotonic() + CLIENT_TIMEOUT
    try:
        response = requests.request(**{**kwargs, "timeout": CLIENT_TIMEOUT, "stream": True})
    except requests.Timeout:
        return None
    with response:
        body = bytearray()
        try:
            for chunk in response.iter_content(chunk_size=None):
                body += chunk
                if time.monotonic() > deadline:
                    return None
        except requests.exceptions.ConnectionError:  # the read timed out
            return None
        response._content = bytes(body)
    return response


def test_the_fuzzing_run_left_no_slot_busy(fuzz_server):
    deadline = time.monotonic() + 60
    while True:
        slots = httpx.get(f"{fuzz_server.url}/slots", timeout=10).json()
        busy = [s["id"] for s in slots if s["is_processing"]]
        health = httpx.get(f"{fuzz_server.url}/health", timeout=10).json()
        queued = sum(m.get("queued", 0) for m in health["models"])
        if not busy and not queued:
            break
        assert time.monotonic() < deadline, f"slots still busy: {busy}, queued: {queued}"
        time.sleep(0.1)
    assert fuzz_server.process.poll() is None, fuzz_server.output()[-3000:]
