"""Cross-origin requests (`gateway.cors`): browser pages on other origins may call the
inference routes, not the private ones unless configured; preflights for every route."""

from __future__ import annotations

import pytest
from test_auth import access_of, mounted_routes

from gateway.errors import ConfigError
from gateway.settings import ApiKey, CorsSettings, load_settings

KEYS = [
    ApiKey(key="inference-key-123", name="app", scopes=["inference"]),
    ApiKey(key="admin-key-123456", name="ops", scopes=["admin"]),
]
PAGE = "https://chat.example"
LOCAL_PAGE = "http://localhost:5173"
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def preflight(client, path: str, origin: str, method: str = "POST"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


@pytest.fixture
def keyed(make_client):
    return make_client(api_keys=KEYS)


def test_a_page_on_any_origin_may_call_inference_routes(keyed):
    response = keyed.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={"Origin": PAGE, "Authorization": "Bearer inference-key-123"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PAGE
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in response.headers["vary"]
    assert "X-Gateway-Adapters" in response.headers["access-control-expose-headers"]
    assert response.json()["choices"][0]["message"]["content"]


def test_errors_before_the_route_carry_the_headers_so_the_page_can_read_them(keyed):
    response = keyed.post("/v1/chat/completions", json=CHAT, headers={"Origin": PAGE})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == PAGE
    streamed = keyed.post(
        "/completion",
        json={"prompt": "hi", "n_predict": 3, "stream": True},
        headers={"Origin": "null", "X-Api-Key": "inference-key-123"},
    )
    assert streamed.status_code == 200
    assert streamed.headers["access-control-allow-origin"] == "null"  # a page opened from a file


def test_a_page_on_another_origin_may_not_call_private_routes(keyed):
    admin = {"Authorization": "Bearer admin-key-123456"}
    for method, path in [
        ("POST", "/v1/adapters/unload"),
        ("GET", "/v1/train/status"),
        ("POST", "/api/extra/shutdown"),
        ("GET", "/slots"),
    ]:
        response = keyed.request(method, path, headers={**admin, "Origin": PAGE})
        assert response.status_code == 403, (method, path)
        assert "access-control-allow-origin" not in response.headers
        assert f"Pages on {PAGE} may not call {method} {path}" in response.text
        assert "[cors] private_origins" in response.text
    kiln = keyed.post("/v1/adapters/unload", headers={**admin, "Origin": PAGE}).json()
    assert kiln["error"]["code"] == "origin_not_allowed"
    # localhost pages and the server's own pages may; neither changes the key check.
    local = keyed.get("/slots", headers={**admin, "Origin": LOCAL_PAGE})
    assert local.status_code == 200
    assert local.headers["access-control-allow-origin"] == LOCAL_PAGE
    own = keyed.get("/v1/train/status", headers={**admin, "Origin": "http://testserver.local"})
    assert own.status_code == 200
    assert "access-control-allow-origin" not in own.headers
    no_key = keyed.post("/v1/adapters/unload", headers={"Origin": LOCAL_PAGE})
    assert no_key.status_code == 401


def test_preflight_needs_no_key_and_answers_for_the_route(keyed):
    response = preflight(keyed, "/v1/chat/completions", PAGE)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == PAGE
    assert response.headers["access-control-allow-methods"] == "POST"
    assert response.headers["access-control-allow-headers"] == "authorization, content-type"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert int(response.headers["access-control-max-age"]) == 600
    adapters = preflight(
        keyed, "/v1/adapters/{name}".replace("{name}", "mine"), LOCAL_PAGE, "DELETE"
    )
    assert adapters.status_code == 204
    assert adapters.headers["access-control-allow-methods"] == "DELETE"
    refused = preflight(keyed, "/v1/adapters/load", PAGE)
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers


def test_preflight_for_every_mounted_route(keyed):
    for method, template, path in mounted_routes(keyed):
        access = access_of(keyed, method, template)
        local = preflight(keyed, path, LOCAL_PAGE, method)
        assert local.status_code == 204, (method, path, local.text)
        assert method in local.headers["access-control-allow-methods"] or method not in (
            "GET",
            "POST",
            "DELETE",
        )
        foreign = preflight(keyed, path, PAGE, method)
        assert foreign.status_code == (403 if access.private else 204), (method, path)


def test_plain_options_still_lists_the_methods(keyed):
    response = keyed.options("/v1/chat/completions")
    assert response.status_code == 204
    assert "POST" in response.headers["allow"]


def test_configured_origins(make_client):
    client = make_client(
        api_keys=KEYS,
        cors=CorsSettings(
            origins=["https://lite.koboldai.net"],
            private_origins=["https://ops.example"],
            headers=["Authorization", "Content-Type"],
            credentials=False,
        ),
    )
    key = {"X-Api-Key": "admin-key-123456"}
    lite = client.post(
        "/api/v1/generate",
        json={"prompt": "hi"},
        headers={**key, "Origin": "https://lite.koboldai.net"},
    )
    assert lite.status_code == 200
    assert "access-control-allow-credentials" not in lite.headers
    other = client.post("/api/v1/generate", json={"prompt": "hi"}, headers={**key, "Origin": PAGE})
    assert other.status_code == 403
    assert other.json()["detail"]["type"] == "permission_error"
    assert "[cors] origins" in other.json()["detail"]["msg"]
    ops = client.get("/metrics", headers={**key, "Origin": "https://ops.example"})
    assert ops.status_code == 200
    assert client.get("/metrics", headers={**key, "Origin": LOCAL_PAGE}).status_code == 403
    answer = preflight(client, "/api/v1/generate", "https://lite.koboldai.net")
    assert answer.headers["access-control-allow-headers"] == "Authorization, Content-Type"


def test_origins_are_checked_at_start_up():
    with pytest.raises(ConfigError, match=r"`https://x.example/` is not an origin.*cors"):
        load_settings(overrides={"cors.origins": ["https://x.example/"]})
    settings = load_settings(environ={"GATEWAY_CORS__PRIVATE_ORIGINS": '["*"]'})
    assert settings.cors.private_origins == ["*"]
