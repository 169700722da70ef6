"""API keys: every mounted route except /health needs a key with the route's scope."""

from __future__ import annotations

from collections import defaultdict

import pytest
from litestar.routes import HTTPRoute

from gateway.settings import ApiKey

KEYS = [
    ApiKey(key="inference-key-123", name="app", scopes=["inference"]),
    ApiKey(key="admin-key-123456", name="ops", scopes=["admin"]),
    ApiKey(key="train-key-1234567", name="trainer", scopes=["train"]),
    ApiKey(key="adapters-key-12345", name="curator", scopes=["adapters"]),
]
RIGHT_KEY = {
    "inference": "inference-key-123",
    "admin": "admin-key-123456",
    "adapters": "adapters-key-12345",
    "train": "train-key-1234567",
}
PUBLIC = {"/health", "/v1/health", "/.well-known/serviceinfo"}
LOOPBACK_ONLY = {"/api/extra/shutdown"}  # also refuses clients that are not on loopback
PATH_VALUES = {"model_id": "echo", "id_slot": "0"}


def mounted_routes(client) -> list[tuple[str, str, dict]]:
    """(method, concrete path, opt) for every route and method the app serves."""
    found = []
    for route in client.app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = route.path_format.format_map(defaultdict(lambda: "x", PATH_VALUES))
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods - {"HEAD", "OPTIONS"}):
                found.append((method, path, handler.opt))
    return found


def error_type(response) -> str:
    """The error type in the family's own shape: OpenAI/llama.cpp `error`, Kobold `detail`;
    FastAPI's `{"detail": "..."}` (NPU-STACK's fine-tune routes) says it by its status."""
    body = response.json()
    if "error" in body:
        return body["error"]["type"]
    if isinstance(body["detail"], str):
        return {401: "authentication_error", 403: "permission_error"}[response.status_code]
    return body["detail"]["type"]


def call(client, method: str, path: str, key: str | None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": "x"}],
        "input": "x",
        "prompt": "x",
    }
    if method in {"POST", "PUT", "PATCH"}:
        return client.request(method, path, headers=headers, json=body)
    return client.request(method, path, headers=headers)


@pytest.fixture
def keyed(make_client):
    return make_client(api_keys=KEYS)


def test_walk_finds_every_family(keyed):
    paths = {path for _, path, _ in mounted_routes(keyed)}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= paths
    assert {"/health", "/metrics", "/schema/openapi.json"} <= paths


def test_every_route_refuses_a_missing_or_wrong_key(keyed):
    routes = mounted_routes(keyed)
    assert len(routes) > 10
    for method, path, _ in routes:
        if path in PUBLIC:
            continue
        for key in (None, "not-a-real-key"):
            response = call(keyed, method, path, key)
            assert response.status_code == 401, (method, path, key, response.text)
            assert error_type(response) == "authentication_error"


def test_every_route_refuses_the_wrong_scope_and_admits_the_right_one(keyed):
    for method, path, opt in mounted_routes(keyed):
        if path in PUBLIC:
            continue
        scope = opt.get("scope", "inference")
        assert scope in RIGHT_KEY, (path, scope)
        wrong = "train-key-1234567" if scope == "inference" else "inference-key-123"
        right = RIGHT_KEY[scope]
        response = call(keyed, method, path, wrong)
        assert response.status_code == 403, (method, path, response.text)
        assert error_type(response) == "permission_error"
        if path in LOOPBACK_ONLY:
            continue
        response = call(keyed, method, path, right)
        assert response.status_code not in (401, 403), (method, path, response.text)
        # admin grants every scope
        assert call(keyed, method, path, "admin-key-123456").status_code not in (401, 403)


def test_health_is_public(keyed):
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/v1/health").status_code == 200


def test_no_keys_means_open_and_says_so(make_client, caplog):
    with caplog.at_level("WARNING", logger="gateway"):
        open_client = make_client()
    for method, path, _ in mounted_routes(open_client):
        if path in LOOPBACK_ONLY:
            continue
        assert call(open_client, method, path, None).status_code not in (401, 403), path
    assert any("no API keys" in r.getMessage() for r in caplog.records)


def test_keys_from_environment():
    from gateway.settings import load_settings

    settings = load_settings(environ={"GATEWAY_API_KEYS": "abcdefgh1:inference+admin, zyxwvuts2"})
    assert [(k.key, k.scopes) for k in settings.api_keys] == [
        ("abcdefgh1", ["inference", "admin"]),
        ("zyxwvuts2", ["inference"]),
    ]
