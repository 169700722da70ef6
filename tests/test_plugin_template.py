"""The plugin template (`plugin_template/`, copier): each kind rendered into a temporary
folder, installed with `pip install -e` into a virtual environment of its own that sees
this one's packages (so nothing leaks into the environment `gateway serve` runs in), its
generated tests run there, and `gateway plugins` there lists it with its hooks. The
rendered code passes ruff under the settings it ships."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "plugin_template"
HOOKS = {
    "backend": ["register_backends"],
    "trainer": ["register_routes", "register_trainers"],
    "routes": ["register_routes"],
}


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment whose Python also imports this one's packages."""
    folder = tmp_path_factory.mktemp("plugin-env")
    venv.create(folder, with_pip=True, system_site_packages=False)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # this environment's packages after its own, as a site directory: its editable
    # installs' own .pth files (the gateway's packages) are read too
    ours = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "zz-gateway-test.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


def render(kind: str, name: str, folder: Path) -> Path:
    from copier import run_copy

    target = folder / name
    run_copy(
        str(TEMPLATE),
        str(target),
        data={"kind": kind, "name": name, "description": f"A test {kind}"},
        defaults=True,
        quiet=True,
    )
    return target


@pytest.mark.parametrize("kind", ["backend", "trainer", "routes"])
def test_a_rendered_plugin_installs_passes_its_tests_and_is_listed(
    kind: str, environment: Path, tmp_path: Path, data_dir: Path
) -> None:
    name = f"acme-{kind}"
    project = render(kind, name, tmp_path)
    answers = (project / ".copier-answers.yml").read_text()
    assert f"kind: {kind}" in answers and f"name: {name}" in answers
    for lint in (["check", "."], ["format", "--check", "."]):  # its own ruff settings
        linted = subprocess.run(
            [sys.executable, "-m", "ruff", *lint], cwd=project, capture_output=True, text=True
        )
        assert linted.returncode == 0, linted.stdout + linted.stderr
    env = {
        **os.environ,
        "TEST_GATEWAY_DATA_DIR": str(data_dir),  # the converted default model, shared
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("PYTHONPATH", None)
    install = subprocess.run(
        [environment, "-m", "pip", "install", "-q", "--no-deps", "-e", "."],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    tests = subprocess.run(
        [environment, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert tests.returncode == 0, tests.stdout[-6000:] + tests.stderr[-3000:]
    assert " passed" in tests.stdout and " failed" not in tests.stdout
    listed = subprocess.run(
        [environment, "-m", "gateway.cli", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins[name]["distribution"] == f"gateway-{name} 0.1.0"
    assert plugins[name]["hooks"] == HOOKS[kind]
    # and the environment the server runs in never saw it
    assert (
        name
        not in subprocess.run(
            [sys.executable, "-m", "gateway.cli", "plugins", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
