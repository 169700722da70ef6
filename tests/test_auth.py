"""API keys and scopes: a walk over the live route table with no key, a wrong key and a
key of each scope, checked against the access table (`gateway.routes.access`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from litestar.routes import HTTPRoute

from gateway.app import GatewayPlugin
from gateway.routes.access import ADMIN, PUBLIC, SERVE, TABLE, AccessTable, render_markdown
from gateway.settings import ApiKey, KoboldSettings, LlamaCppSettings

KEYS = [
    ApiKey(key="inference-key-123", name="app", scopes=["inference"]),
    ApiKey(key="admin-key-123456", name="ops", scopes=["admin"]),
    ApiKey(key="train-key-1234567", name="trainer", scopes=["train"]),
    ApiKey(key="adapters-key-12345", name="curator", scopes=["adapters"]),
]
KEY_OF = {
    "inference": "inference-key-123",
    "admin": "admin-key-123456",
    "adapters": "adapters-key-12345",
    "train": "train-key-1234567",
}
PATH_VALUES = {"model_id": "echo", "id_slot": "0"}
DELIBERATE_5XX = {501}
"""Routes of capabilities this server lacks (or switched off) answer 501 by design."""
ENDLESS = {("GET", "/models/sse")}
"""Event streams that never end: their refusals are walked, an admitted call is not (the
model manager's live test reads that stream)."""


def mounted_routes(client) -> list[tuple[str, str, str]]:
    """(method, path template, concrete path) for every route and method the app serves."""
    found = []
    for route in client.app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = route.path_format.format_map(defaultdict(lambda: "x", PATH_VALUES))
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            found.append((method, route.path_format, path))
    return found


def access_of(client, method: str, template: str):
    row = client.app.plugins.get(GatewayPlugin).access.lookup(method, template)
    assert row is not None, f"{method} {template} has no access row"
    return row.access


def error_type(response) -> str:
    """The error type in the family's own shape: OpenAI/llama.cpp `error`, Kobold `detail`;
    FastAPI's `{"detail": "..."}` (NPU-STACK's fine-tune routes) says it by its status."""
    body = response.json()
    if "error" in body:
        return body["error"]["type"]
    if isinstance(body["detail"], str):
        return {401: "authentication_error", 403: "permission_error"}[response.status_code]
    return body["detail"]["type"]


def call(client, method: str, path: str, headers: dict[str, str]):
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": "x"}],
        "input": "x",
        "prompt": "x",
    }
    if method in {"POST", "PUT", "PATCH"}:
        return client.request(method, path, headers=headers, json=body)
    return client.request(method, path, headers=headers)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(make_client):
    # Every switchable route on, so the walk reaches past "this is off".
    return make_client(
        api_keys=KEYS,
        kobold=KoboldSettings(admin=True),
        llamacpp=LlamaCppSettings(props=True),
    )


def test_every_mounted_route_has_a_row(keyed):
    routes = mounted_routes(keyed)
    assert len(routes) > 100
    families = {row.family for row in keyed.app.plugins.get(GatewayPlugin).access.rows()}
    assert set(TABLE) <= families
    for method, template, _ in routes:
        access_of(keyed, method, template)


def test_walk_no_key_and_a_wrong_key(keyed):
    for method, template, path in mounted_routes(keyed):
        access = access_of(keyed, method, template)
        for headers in ({}, bearer("not-a-real-key"), {"X-Api-Key": "not-a-real-key"}):
            response = call(keyed, method, path, headers)
            if access is PUBLIC:  # keys, right or wrong, are not looked at
                assert response.status_code not in (401, 403), (method, path)
                continue
            assert response.status_code == 401, (method, path, headers, response.text)
            assert error_type(response) == "authentication_error"


def test_walk_each_scope(keyed):
    for method, template, path in mounted_routes(keyed):
        access = access_of(keyed, method, template)
        for scope, key in KEY_OF.items():
            allowed = access.scope in (None, scope) or scope == "admin"
            if allowed and (method, template) in ENDLESS:
                continue
            response = call(keyed, method, path, bearer(key))
            if allowed:
                assert response.status_code not in (401, 403), (method, path, scope, response.text)
                assert response.status_code < 500 or response.status_code in DELIBERATE_5XX, (
                    method,
                    path,
                    scope,
                    response.text,
                )
            else:
                assert response.status_code == 403, (method, path, scope, response.text)
                assert error_type(response) == "permission_error"
                assert f"`{access.scope}` scope" in response.text


def test_the_table_says_what_an_operator_expects(keyed):
    """Not the table checked against itself: the routes an operator worries about."""

    def scope(method: str, template: str) -> str | None:
        return access_of(keyed, method, template).scope

    assert scope("POST", "/api/extra/shutdown") == "admin"
    assert access_of(keyed, "POST", "/api/extra/shutdown") is ADMIN
    assert {scope(m, p) for m, p in [("GET", "/health"), ("GET", "/.well-known/serviceinfo")]} == {
        None
    }
    public = [r for r in keyed.app.plugins.get(GatewayPlugin).access.rows() if r.access is PUBLIC]
    assert sorted(r.path for r in public) == [
        "/.well-known/serviceinfo",
        "/health",
        "/ui",  # the dashboard's page and files hold no data
        "/ui/session",
        "/ui/static/{name}",
        "/v1/health",
    ]
    assert scope("GET", "/metrics") == "admin"
    assert scope("POST", "/props") == "admin"
    assert scope("POST", "/slots/{id_slot}") == "admin"
    assert scope("POST", "/api/admin/reload_config") == "admin"
    assert scope("POST", "/v1/adapters/load") == "adapters"
    assert scope("POST", "/lora-adapters") == "adapters"
    assert scope("POST", "/v1/train/sft") == "train"
    assert scope("POST", "/v1/distillation") == "train"
    assert scope("POST", "/v1/chat/completions") == "inference"
    for method, template, _ in mounted_routes(keyed):
        access = access_of(keyed, method, template)
        if access.scope not in (None, "inference"):
            assert access.private, (method, template)


def test_shutdown_with_an_inference_key_is_refused(keyed):
    response = keyed.post("/api/extra/shutdown", headers=bearer("inference-key-123"))
    assert response.status_code == 403
    assert response.json()["detail"]["type"] == "permission_error"


def test_x_api_key_is_taken_as_llama_server_takes_it(keyed):
    assert keyed.get("/v1/models", headers={"X-Api-Key": "inference-key-123"}).status_code == 200
    assert keyed.get("/slots", headers={"x-api-key": "inference-key-123"}).status_code == 200
    wrong = keyed.get("/v1/models", headers={"X-Api-Key": "nope-nope-nope"})
    assert wrong.status_code == 401
    refused = keyed.get("/metrics", headers={"X-Api-Key": "inference-key-123"})
    assert refused.status_code == 403
    missing = keyed.get("/v1/models")
    assert "X-Api-Key" in missing.json()["error"]["message"]


def test_health_is_public(keyed):
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/v1/health").status_code == 200


def test_no_keys_means_open_and_says_so(make_client, caplog):
    with caplog.at_level("WARNING", logger="gateway"):
        open_client = make_client()
    for method, template, path in mounted_routes(open_client):
        if (method, template) not in ENDLESS:
            assert call(open_client, method, path, {}).status_code not in (401, 403), path
    assert any("no API keys" in r.getMessage() for r in caplog.records)


def test_keys_from_environment():
    from gateway.settings import load_settings

    settings = load_settings(environ={"GATEWAY_API_KEYS": "abcdefgh1:inference+admin, zyxwvuts2"})
    assert [(k.key, k.scopes) for k in settings.api_keys] == [
        ("abcdefgh1", ["inference", "admin"]),
        ("zyxwvuts2", ["inference"]),
    ]


def test_docs_access_table_is_current(client):
    """docs/access.md holds `gateway routes --markdown` for the built-in families."""
    docs = Path(__file__).parents[1] / "docs" / "access.md"
    table = render_markdown(client.app.plugins.get(GatewayPlugin).access)
    assert table in docs.read_text(), (
        "run: gateway routes --markdown, and paste into docs/access.md"
    )


def test_a_route_without_a_row_stops_start_up(make_client):
    from litestar import Router, get

    from gateway.errors import ConfigError
    from gateway.routes.family import RouteFamily

    @get("/hello", opt={"family": "hello"})
    async def hello() -> str:
        return "hi"

    router = Router(path="/", route_handlers=[hello])
    with pytest.raises(ConfigError, match=r"`hello` does not say who may call GET /hello"):
        AccessTable([RouteFamily("hello", router)])
    with pytest.raises(ConfigError, match=r"does not mount: POST /bye"):
        AccessTable(
            [RouteFamily("hello", router, access={"GET /hello": SERVE, "POST /bye": SERVE})]
        )
