"""The dashboard's routes without a browser: the page and its files are public, held to
the gateway's own origin by their Content-Security-Policy, and reference nothing
elsewhere; `/ui/session` tells each key its scopes. The page itself, driven by a real
browser on the real model: `test_ui_browser.py`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.plugins import make_plugin_manager
from gateway.routes.ui.controllers import STATIC
from gateway.settings import ApiKey, Settings

KEYS = [
    ApiKey(key="admin-key-1234567", name="ops", scopes=["admin"]),
    ApiKey(key="tuner-key-1234567", name="tuner", scopes=["inference", "train"]),
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        models=[ModelSpec(name="echo", backend="echo")], data_dir=str(tmp_path), api_keys=KEYS
    )
    gateway = Gateway(settings, make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""}))
    with TestClient(create_app(gateway=gateway)) as test_client:
        yield test_client


def test_the_page_and_its_files_are_public_and_confined_to_the_gateway(
    client: TestClient,
) -> None:
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "script-src 'self'" in policy and "unsafe" not in policy
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        reply = client.get(f"/ui/static/{name}")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith(kind)
        assert reply.headers["content-security-policy"] == policy
    for path in STATIC.iterdir():
        text = path.read_text()
        # nothing fetched from elsewhere: no absolute URL but SVG's namespace name
        outside = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"'`)]*", text))
        assert outside <= {"http://www.w3.org/2000/svg"}, (path.name, outside)
        assert "<script>" not in text and " style=" not in text  # the policy forbids both


def test_unknown_files_and_escapes_are_404(client: TestClient) -> None:
    for name in ["nope.js", "..%2Fcontrollers.py", "index.html.bak", "__init__.py"]:
        reply = client.get(f"/ui/static/{name}")
        assert reply.status_code == 404, name
        assert "error" in reply.json()


def test_the_session_tells_each_key_its_scopes(client: TestClient) -> None:
    anonymous = client.get("/ui/session").json()
    assert anonymous["key_required"] is True and anonymous["scopes"] == []
    assert "ui" in anonymous["families"] and "openai" in anonymous["families"]
    tuner = client.get("/ui/session", headers={"X-Api-Key": "tuner-key-1234567"}).json()
    assert (tuner["actor"], tuner["scopes"], tuner["key_required"]) == (
        "tuner",
        ["inference", "train"],
        False,
    )
    admin = client.get("/ui/session", headers={"Authorization": "Bearer admin-key-1234567"})
    assert admin.json()["scopes"] == ["inference", "adapters", "train", "admin"]
    wrong = client.get("/ui/session", headers={"X-Api-Key": "not-a-key-at-all"})
    assert wrong.status_code == 200  # public: says so rather than refuse
    assert wrong.json()["key_required"] is True and wrong.json()["key_error"] == "Invalid API key."
    assert anonymous["key_error"] is None


def test_without_keys_the_session_has_every_scope(tmp_path: Path) -> None:
    settings = Settings(models=[ModelSpec(name="echo", backend="echo")], data_dir=str(tmp_path))
    gateway = Gateway(settings, make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""}))
    with TestClient(create_app(gateway=gateway)) as client:
        session = client.get("/ui/session").json()
    assert session["scopes"] == ["inference", "adapters", "train", "admin"]
    assert session["key_required"] is False and session["actor"] is None
