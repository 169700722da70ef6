"""Kiln's monitoring routes on echo models: `/v1/config` (secrets redacted),
`/v1/stats/decode`, `/v1/stats/recent-requests` and the Kiln fields of `/health`. The
real model's figures are checked in `test_metrics_live.py`."""

from __future__ import annotations

import json

from gateway.engine import ModelSpec
from gateway.settings import ApiKey, StatsSettings, TrainingSettings

KEY = "admin-key-0123456789"
SLOW = ModelSpec(name="echo", backend="echo", options={"delay": 0.01})


def ask(client, text: str, **extra) -> dict:
    body = {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}
    reply = client.post("/v1/chat/completions", json=body, headers={"X-Api-Key": KEY})
    assert reply.status_code == 200, reply.text
    return reply


def test_config_shows_the_effective_settings_with_secrets_redacted(make_client):
    client = make_client(
        api_keys=[ApiKey(key=KEY, scopes=["admin"])],
        training=TrainingSettings(webhook_secret="hook-secret-value"),
    )
    reply = client.get("/v1/config", headers={"X-Api-Key": KEY})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert KEY not in reply.text and "hook-secret-value" not in reply.text
    assert body["settings"]["api_keys"][0]["key"] == "***"
    assert body["settings"]["api_keys"][0]["scopes"] == ["admin"]
    assert body["settings"]["training"]["webhook_secret"] == "***"
    assert body["settings"]["server"]["port"] == 8000
    models = {m["name"]: m for m in body["models"]}
    assert models["echo"]["state"] == "ready" and models["echo"]["backend"] == "echo"
    assert body["memory_budget"]["total_ram_gb"] > 0
    denied = client.get("/v1/config", headers={"X-Api-Key": "wrong-key-000000"})
    assert denied.status_code == 401 and "error" in denied.json()


def test_decode_stats_follow_generated_tokens(make_client):
    client = make_client(models=[SLOW])
    empty = client.get("/v1/stats/decode").json()
    assert empty == {
        "tok_per_sec": 0.0,
        "p50_itl_ms": 0.0,
        "p99_itl_ms": 0.0,
        "mean_itl_ms": 0.0,
        "sample_count": 0,
        "window_secs": 60.0,
    }
    text = "one two three four five six"  # the echo model's tokens are characters
    for _ in range(3):
        ask(client, text)
    stats = client.get("/v1/stats/decode").json()
    assert stats["sample_count"] == 3 * (len(text) - 1)  # gaps after each first token
    assert stats["tok_per_sec"] > 0
    assert 5 <= stats["p50_itl_ms"] <= stats["p99_itl_ms"] < 1000
    assert stats["mean_itl_ms"] > 0


def test_recent_requests_are_newest_first_with_capped_previews(make_client):
    client = make_client(models=[SLOW])
    ask(client, "first")
    long = "word " * 100
    streamed = client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": long}], "stream": True},
    )
    assert streamed.status_code == 200
    entries = client.get("/v1/stats/recent-requests").json()
    assert [e["streamed"] for e in entries] == [True, False]
    newest, oldest = entries
    assert oldest["prompt_preview"] == "first" and oldest["completion_preview"] == "first"
    assert len(newest["prompt_preview"]) == 120 and len(newest["completion_preview"]) == 200
    assert newest["completion_tokens"] == len(long) and newest["finish_reason"] == "stop"
    assert newest["model"] == "echo" and newest["duration_ms"] >= 0
    assert newest["timestamp_unix_ms"] >= oldest["timestamp_unix_ms"]


def test_recent_requests_can_be_switched_off(make_client):
    client = make_client(stats=StatsSettings(recent_requests=0))
    ask(client, "private prompt")
    assert client.get("/v1/stats/recent-requests").json() == []


def test_health_has_kilns_fields(make_client):
    client = make_client()
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "echo" and body["backend"] == "echo"
    assert body["uptime_seconds"] >= 0
    assert body["scheduler"] == {"waiting": 0, "running": 0, "slots": 0}
    assert {c["name"]: c["pass"] for c in body["checks"]} == {
        "model_loaded": True,
        "no_failed_model": True,
    }
    assert json.dumps(body)  # plain JSON all through
