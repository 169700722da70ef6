"""/health readiness, /metrics, and the OpenAPI document."""

from __future__ import annotations

import time

from gateway.engine import ModelSpec

SLOW = ModelSpec(name="slow", backend="echo", options={"load_delay": 0.5})


def test_health_is_503_while_loading_then_200(make_client):
    client = make_client(models=[ModelSpec(name="echo", backend="echo"), SLOW])
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["error"] == {
        "code": 503,
        "message": "Loading model",
        "type": "unavailable_error",
    }
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "slow", "messages": [{"role": "user", "content": "x"}]},
    )
    # a request for a model still loading waits for it (the model manager's shared load)
    assert chat.status_code == 200, chat.text
    for _ in range(100):
        response = client.get("/v1/health")
        if response.status_code == 200:
            break
        time.sleep(0.05)
    body = response.json()
    assert body["status"] == "ok"
    states = {m["name"]: m["state"] for m in body["models"]}
    assert states["echo"] == states["slow"] == "ready"


def test_health_reports_a_model_that_failed(make_client):
    client = make_client(
        models=[ModelSpec(name="bad", backend="echo", options={"load_delay": "x"})]
    )
    for _ in range(50):
        response = client.get("/health")
        if "failed" in response.text:
            break
        time.sleep(0.02)
    assert response.status_code == 503
    assert "Model `bad` failed to load" in response.json()["error"]["message"]
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "bad", "messages": [{"role": "user", "content": "x"}]},
    )
    assert chat.status_code == 500
    assert "failed to load" in chat.json()["error"]["message"]


def test_metrics_count_requests_and_tokens(client):
    body = {"model": "echo", "messages": [{"role": "user", "content": "four"}]}
    client.post("/v1/chat/completions", json=body)
    client.post("/v1/chat/completions", json=body | {"model": "missing"})
    text = client.get("/metrics").text
    route = 'route="POST /v1/chat/completions"'
    assert f'gateway_requests_total{{family="openai",{route},status="200"}} 1.0' in text
    assert f'gateway_requests_total{{family="openai",{route},status="404"}} 1.0' in text
    assert f'gateway_request_seconds_count{{family="openai",{route},status="200"}} 1.0' in text
    assert 'gateway_time_to_first_token_seconds_count{model="echo"} 1.0' in text
    assert 'gateway_inter_token_seconds_count{model="echo"} 3.0' in text
    assert 'gateway_generated_tokens_total{model="echo"} 4.0' in text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_openapi_documents_every_mounted_route_with_its_structs(client):
    document = client.get("/schema/openapi.json").json()
    paths = document["paths"]
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/health",
    ]:
        assert path in paths, path
    schemas = document["components"]["schemas"]
    assert "ChatCompletionRequest" in schemas
    assert "ChatCompletion" in schemas
    assert "max_tokens" in schemas["ChatCompletionRequest"]["properties"]


def test_openapi_leaves_out_unmounted_families(make_client):
    document = make_client(routes={"openai": False}).get("/schema/openapi.json").json()
    assert "/v1/chat/completions" not in document["paths"]
