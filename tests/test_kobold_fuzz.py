"""KoboldCpp's own OpenAPI document against a live gateway: schemathesis generates valid
requests (positive mode) for every operation of the Kobold family and checks each answer:
no server error, a documented status code and content type, a body that matches the
documented schema, valid data accepted.

The server runs the EchoBackend (generation with fuzzed `max_length` on the real model
would take minutes), with `[kobold] admin = true` so the admin routes answer too. The
real model gets lenient bodies in test_kobold_live.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from live import LiveServer, start_server, stop_server
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

SPEC = Path(__file__).with_name("data") / "koboldcpp-openapi.json"
EXAMPLES = 10

schema = (
    schemathesis.openapi.from_path(SPEC)
    # KoboldCpp's OpenAI-compatible routes belong to the OpenAI family, tested there.
    .exclude(path_regex=r"^/v1/")
)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE], max_examples=EXAMPLES, deterministic=True
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]

# Where koboldcpp-openapi.json is wrong about what KoboldCpp answers, the gateway follows
# KoboldCpp, and the check that the document would fail is left out for that operation.
REFUSES = {status_code_conformance, positive_data_acceptance}
DOCUMENT_WRONG = {
    # BasicResult nests `result` in an object; KoboldCpp sends {"result": "<text>"}.
    "GET /api/v1/model": {response_schema_conformance},
    "GET /api/v1/info/version": {response_schema_conformance},
    # KoboldCpp streams server-sent events; the document describes a JSON reply.
    "POST /api/extra/generate/stream": {content_type_conformance, response_schema_conformance},
    # KoboldCpp answers {"text": ""} (ValueResult requires an integer `value`).
    "POST /api/extra/transcribe": {response_schema_conformance},
    # A list of results (the document's own example), typed as an object.
    "POST /api/extra/websearch": {response_schema_conformance},
    "GET /api/admin/list_options": {response_schema_conformance},
    # `images` is a list of base64 strings, typed as one string.
    "POST /sdapi/v1/txt2img": {response_schema_conformance},
    "POST /sdapi/v1/img2img": {response_schema_conformance},
    # `data` is the saved story object {title, format, data} (KoboldAI Lite reads
    # `data.data`), or null; typed as a string.
    "POST /api/extra/data/load": {response_schema_conformance},
    # KoboldCpp answers 400 for ids it cannot pass on as token ids (any float; here a
    # fraction or an id outside the vocabulary), for a save slot that is not a number
    # from 0 to N-1, for a multiplayer update without a story, and for a caption request
    # without a vision model (503 there; 400 here: a retry cannot help). The document
    # lists only 200 for each.
    "POST /api/extra/detokenize": REFUSES,
    "POST /api/extra/data/save": REFUSES,
    "POST /api/extra/multiplayer/setstory": REFUSES,
    "POST /sdapi/v1/interrogate": REFUSES,
}


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("kobold-fuzz")
    config = folder / "echo.toml"
    config.write_text(
        f'data_dir = "{folder}"\n[kobold]\nadmin = true\n[[models]]\nname = "echo"\nbackend = "echo"\n'
    )
    server = start_server(["--config", str(config)], {}, folder / "server.log", timeout=60)
    yield server
    stop_server(server)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_kobold_family_answers_its_document(case, echo_server):
    excluded = DOCUMENT_WRONG.get(f"{case.method} {case.path}", set())
    case.call_and_validate(
        base_url=echo_server.url,
        checks=[check for check in CHECKS if check not in excluded],
        timeout=30,
    )
