"""Which model serves a request: `model` is optional on every route, unknown names are a
404 listing the served models, or (`unknown_models = "default"`) served by the default."""

from __future__ import annotations

import pytest

from gateway.engine import ModelSpec

TWO = [ModelSpec(name="echo", backend="echo"), ModelSpec(name="echo-b", backend="echo")]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

ROUTES = [
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 4}),
    ("/v1/embeddings", {"input": "hi"}),
    ("/chat/completions", CHAT),
    ("/completions", {"prompt": "hi", "max_tokens": 4}),
]
# `/embeddings` (no /v1) is llama-server's native format: no `model` in its answer; the
# choice of model is the same there (see test_native_routes_follow_the_same_rule).


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_no_model_is_served_by_the_default_and_named_in_the_response(make_client, path, body):
    client = make_client(models=TWO)
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "echo"
    named = client.post(path, json={**body, "model": "echo-b"})
    assert named.json()["model"] == "echo-b"


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_unknown_model_is_a_404_listing_the_served_models(make_client, path, body):
    client = make_client(models=TWO)
    response = client.post(path, json={**body, "model": "gpt-3.5-turbo"})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert "`gpt-3.5-turbo`" in error["message"]
    assert "`echo`, `echo-b`" in error["message"]
    if path.startswith("/v1/"):
        assert error["code"] == "model_not_found"
        assert error["param"] == "model"
    else:  # llama.cpp's shape
        assert error["type"] == "not_found_error"
        assert error["code"] == 404


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_unknown_model_served_by_the_default_when_configured(make_client, path, body):
    client = make_client(models=TWO, unknown_models="default")
    response = client.post(path, json={**body, "model": "gpt-3.5-turbo"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "echo"


@pytest.mark.parametrize("path", ["/completion", "/tokenize", "/embeddings"])
def test_native_routes_follow_the_same_rule(make_client, path):
    bodies = {"/completion": {"prompt": "hi", "n_predict": 2}, "/embeddings": {"input": "hi"}}
    body = bodies.get(path, {"content": "hi"})
    client = make_client(models=TWO)
    assert client.post(path, json=body).status_code == 200
    missing = client.post(path, json={**body, "model": "gpt-4o"})
    assert missing.status_code == 404
    assert "`echo`, `echo-b`" in missing.json()["error"]["message"]
    lenient = make_client(models=TWO, unknown_models="default")
    assert lenient.post(path, json={**body, "model": "gpt-4o"}).status_code == 200


def test_unknown_model_card_lists_served_models(make_client):
    client = make_client(models=TWO)
    response = client.get("/v1/models/gpt-4o")
    assert response.status_code == 404
    assert "`echo`, `echo-b`" in response.json()["error"]["message"]


def test_setting_is_validated():
    from gateway.errors import ConfigError
    from gateway.settings import load_settings

    assert load_settings(environ={"GATEWAY_UNKNOWN_MODELS": "default"}).unknown_models == "default"
    with pytest.raises(ConfigError, match="unknown_models"):
        load_settings(environ={"GATEWAY_UNKNOWN_MODELS": "maybe"})


def test_native_default_is_the_llamacpp_alias(make_client):
    from gateway.settings import LlamaCppSettings

    knobs = LlamaCppSettings(model_alias="echo-b")
    body = {"prompt": "hi", "n_predict": 2}
    client = make_client(models=TWO, llamacpp=knobs, unknown_models="default")
    assert client.post("/completion", json=body).json()["model"] == "echo-b"
    assert client.post("/completion", json={**body, "model": "gpt-4o"}).json()["model"] == "echo-b"
    assert client.post("/completion", json={**body, "model": "echo"}).json()["model"] == "echo"
