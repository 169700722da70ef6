"""The Kobold family as a server: the generation queue (503 beyond `queue_limit`, places
given back), polling and aborting by genkey, the admin routes, shutdown."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from live import start_server, stop_server

from gateway.settings import KoboldSettings


def test_busy_beyond_the_queue_limit_is_503(tmp_path):
    config = tmp_path / "echo.toml"
    config.write_text(
        '[kobold]\nqueue_limit = 1\n[[models]]\nname = "echo"\nbackend = "echo"\n'
        "options = { delay = 0.05 }\n"
    )
    server = start_server(["--config", str(config)], {}, tmp_path / "server.log", timeout=60)
    try:
        url = f"{server.url}/api/v1/generate"
        slow = threading.Thread(
            target=httpx.post, args=(url,), kwargs={"json": {"prompt": "x" * 30}, "timeout": 30}
        )
        slow.start()
        for _ in range(1000):  # wait until the slow generation holds the only place
            if httpx.get(f"{server.url}/api/extra/perf").json()["idle"] == 0:
                break
        busy = []
        while slow.is_alive():
            response = httpx.post(url, json={"prompt": "y"})
            if response.status_code == 503:
                busy.append(response.json())
        slow.join()
        assert busy and busy[0]["detail"]["type"] == "service_unavailable"
    finally:
        stop_server(server)


def test_polling_sees_growing_text_abort_stops_and_genkeys_do_not_mix(tmp_path):
    config = tmp_path / "echo.toml"
    config.write_text('[[models]]\nname = "echo"\nbackend = "echo"\noptions = { delay = 0.03 }\n')
    server = start_server(["--config", str(config)], {}, tmp_path / "server.log", timeout=60)
    results: dict[str, Any] = {}

    def run(key: str, prompt: str) -> None:
        body = {"prompt": prompt, "genkey": key, "max_length": len(prompt)}
        results[key] = httpx.post(f"{server.url}/api/v1/generate", json=body, timeout=30).json()

    try:
        threads = {
            "KA": threading.Thread(target=run, args=("KA", "A" * 60)),
            "KB": threading.Thread(target=run, args=("KB", "B" * 300)),  # ~9 s: aborted
        }
        for thread in threads.values():
            thread.start()
        seen: dict[str, list[str]] = {"KA": [], "KB": []}
        aborted = False
        while threads["KA"].is_alive():
            for key in seen:
                check = httpx.post(f"{server.url}/api/extra/generate/check", json={"genkey": key})
                seen[key].append(check.json()["results"][0]["text"])
            growing = len({len(text) for text in seen["KA"]}) > 2
            if not aborted and growing and len(seen["KB"][-1]) > 10:
                abort = httpx.post(f"{server.url}/api/extra/abort", json={"genkey": "KB"})
                assert abort.json()["success"] is True
                aborted = True
        for thread in threads.values():
            thread.join()
        assert aborted
        assert set("".join(seen["KA"])) <= {"A"} and set("".join(seen["KB"])) <= {"B"}
        lengths = [len(text) for text in seen["KA"]]
        assert lengths == sorted(lengths)  # growing partial text
        assert results["KA"]["results"][0]["text"] == "A" * 60
        stopped = results["KB"]["results"][0]
        assert stopped["finish_reason"] == "abort" and 10 < len(stopped["text"]) < 300
    finally:
        stop_server(server)


def test_admin_off_answers_like_koboldcpp_and_on_reload_config_switches_models(
    make_client, tmp_path
):
    off = make_client()
    assert off.get("/api/admin/list_options").json() == []
    assert off.post("/api/admin/reload_config", json={"filename": "x.toml"}).json() == {
        "success": False
    }
    assert off.post("/api/admin/check_state").json() == {
        "success": False,
        "old_states": [],
        "new_state_size": 0,
        "new_tokens": 0,
    }
    assert off.post("/api/admin/clear_state").json() == {"success": False}
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "other.toml").write_text('[[models]]\nname = "other"\nbackend = "echo"\n')
    client = make_client(kobold=KoboldSettings(admin=True, admin_dir=str(configs)))
    assert client.get("/api/admin/list_options").json() == ["other.toml"]
    for bad in ({"filename": "../x.toml"}, {"filename": "missing.toml"}, {}):
        refused = client.post("/api/admin/reload_config", json=bad)
        assert refused.status_code == 200 and refused.json() == {"success": False}
    # Nothing generated yet: nothing to save; an empty slot does not load.
    assert client.post("/api/admin/save_state", json={"slot": 0}).json()["success"] is False
    assert client.post("/api/admin/load_state", json={"slot": "1"}).json() == {
        "success": False,
        "new_tokens": 0,
    }
    reloaded = client.post("/api/admin/reload_config", json={"filename": "other.toml"})
    assert reloaded.json() == {"success": True}
    for _ in range(100):
        models = [m["id"] for m in client.get("/v1/models").json()["data"]]
        if "other" in models:
            break
    assert "other" in models and "echo" not in models
    assert client.get("/api/v1/model").json() == {"result": "koboldcpp/other"}


def test_shutdown_is_off_by_default(client, tmp_path):
    refused = client.post("/api/extra/shutdown")
    assert refused.status_code == 200 and refused.json() == {"success": False}
    config = tmp_path / "echo.toml"
    config.write_text('[[models]]\nname = "echo"\nbackend = "echo"\n')
    server = start_server(["--config", str(config)], {}, tmp_path / "server.log", timeout=60)
    try:
        # From loopback too, as KoboldCpp without --singleinstance.
        assert httpx.post(f"{server.url}/api/extra/shutdown").json() == {"success": False}
        assert httpx.get(f"{server.url}/health").status_code == 200
        # Under uvicorn too, a page on another origin gets the CORS headers.
        page = {"Origin": "https://chat.example"}
        models = httpx.get(f"{server.url}/api/v1/model", headers=page)
        assert models.headers["access-control-allow-origin"] == "https://chat.example"
    finally:
        stop_server(server)


def test_shutdown_when_on_needs_the_admin_scope_and_loopback(tmp_path):
    config = tmp_path / "echo.toml"
    config.write_text('[kobold]\nshutdown = true\n[[models]]\nname = "echo"\nbackend = "echo"\n')
    keys = {"GATEWAY_API_KEYS": "inference-key-1:inference,admin-key-12:admin"}
    server = start_server(["--config", str(config)], keys, tmp_path / "server.log", timeout=60)
    url = f"{server.url}/api/extra/shutdown"
    try:
        assert httpx.post(url).status_code == 401
        inference = httpx.post(url, headers={"Authorization": "Bearer inference-key-1"})
        assert inference.status_code == 403
        assert inference.json()["detail"]["type"] == "permission_error"
        # Through a reverse proxy on this host the peer is loopback too: not trusted.
        relayed = {"X-Api-Key": "admin-key-12", "X-Forwarded-For": "203.0.113.9"}
        assert httpx.post(url, headers=relayed).json() == {"success": False}
        # A page on another site cannot make a browser send it (no preflight needed).
        page = {"X-Api-Key": "admin-key-12", "Origin": "https://evil.example"}
        assert httpx.post(url, headers=page).status_code == 403
        assert server.process.poll() is None
        assert httpx.post(url, headers={"X-Api-Key": "admin-key-12"}).json() == {"success": True}
        assert server.process.wait(timeout=30) is not None
    finally:
        stop_server(server)


def test_a_refused_request_gives_its_place_back(make_client):
    client = make_client(kobold=KoboldSettings(queue_limit=1))
    for _ in range(3):
        assert client.post("/api/v1/generate", json={"prompt": 3}).status_code == 400
        stream = client.post("/api/extra/generate/stream", json={"prompt": "x", "top_k": [1]})
        assert stream.status_code == 400
    assert client.post("/api/v1/generate", json={"prompt": "ok"}).status_code == 200
    assert client.post("/api/extra/generate/stream", json={"prompt": "ok"}).status_code == 200
    assert client.get("/api/extra/perf").json()["idle"] == 1
