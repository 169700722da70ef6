"""Pytest fixtures for plugins' own tests: enable with `pytest_plugins =
["gateway.testing.fixtures"]` in a `conftest.py`.

- `gateway_client(models, **settings)`: the gateway app, with every installed plugin
  found through the `gateway` entry points as `gateway serve` finds them, serving
  `models` (`ModelSpec`s; default: one `echo` model) in a temporary data directory, as a
  Litestar `TestClient` whose models have loaded. A route family's tests call it.
- `training_context(model, **fields)`: the `TrainingContext` a training worker hands a
  trainer, for a model (`ModelSpec`; default: the default chat model) in a temporary
  data directory; its `steps` and `lines` record what the trainer reported.
- `BackendContract` (`gateway.testing.contract`): the tests every backend must pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from litestar.testing import TestClient

from gateway.engine import ModelSpec


@contextlib.contextmanager
def make_client(
    models: list[ModelSpec], data_dir: Path, timeout: float = 600, **settings: Any
) -> Iterator[TestClient]:
    """The app serving `models` from `data_dir`, every model loaded (or `timeout`)."""
    from gateway.app import create_app
    from gateway.gateway import Gateway
    from gateway.settings import Settings

    gateway = Gateway(Settings(models=models, data_dir=str(data_dir), **settings))
    with TestClient(create_app(gateway=gateway), timeout=timeout) as client:
        deadline = time.monotonic() + timeout
        while not gateway.models.all_ready:
            failed = [h for h in gateway.models if h.error]
            if failed:
                raise RuntimeError(f"model `{failed[0].name}` failed to load: {failed[0].error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the models did not load within {timeout:g} s")
            time.sleep(0.05)
        client.app.state["gateway"] = gateway
        yield client


@pytest.fixture(scope="session")
def gateway_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data directory the fixtures share for a test session, so that a model's
    converted weights are made once; `TEST_GATEWAY_DATA_DIR` names one to keep between
    sessions."""
    kept = os.environ.get("TEST_GATEWAY_DATA_DIR")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return Path(kept)
    return tmp_path_factory.mktemp("gateway-data")


def shared_models(data_dir: Path, folder: Path) -> None:
    """`folder` sees the converted models of `data_dir` (a symlink)."""
    shared = data_dir / "models"
    shared.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models").symlink_to(shared.resolve(), target_is_directory=True)


@pytest.fixture
def gateway_client(tmp_path: Path, gateway_data_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """`gateway_client(models=None, **settings)` -> a TestClient (closed after the test)."""
    with contextlib.ExitStack() as stack:
        started = 0

        def start(models: list[ModelSpec] | None = None, **settings: Any) -> TestClient:
            nonlocal started
            started += 1
            chosen = models if models is not None else [ModelSpec(name="echo", backend="echo")]
            folder = tmp_path / f"gateway-{started}"
            shared_models(gateway_data_dir, folder)
            return stack.enter_context(make_client(chosen, folder, **settings))

        yield start


class RecordingContext:
    """What a trainer reported through its `TrainingContext`."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, float, float, float]] = []
        self.lines: list[str] = []
        self.info: dict[str, Any] = {}
        self.stop_after: int | None = None

    def on_step(self, step: int, total: int, loss: float, rate: float, epoch: float) -> bool:
        self.steps.append((step, total, loss, rate, epoch))
        return self.stop_after is None or step < self.stop_after

    def on_update(self, info: dict[str, Any], cost: float) -> bool:
        self.info.update(info)
        return True


@pytest.fixture
def training_context(tmp_path: Path, gateway_data_dir: Path) -> Callable[..., Any]:
    """`training_context(model=None, **fields)` -> `(context, record)`: a
    `TrainingContext` for `model` (default: the default chat model) whose adapters go to
    this test's folder, and the `RecordingContext` of what the trainer reported (set
    `record.stop_after` to cancel the job after that step)."""
    from gateway.adapters.store import AdapterStore
    from gateway.settings import DEFAULT_CHAT_MODEL
    from gateway.training.trainer import TrainingContext

    def make(model: ModelSpec | None = None, **fields: Any) -> tuple[Any, RecordingContext]:
        spec = model or DEFAULT_CHAT_MODEL
        folder = tmp_path / "training"
        shared_models(gateway_data_dir, folder)
        record = RecordingContext()
        context = TrainingContext(
            spec=spec,
            data_dir=folder,
            adapters=AdapterStore.for_model(folder, spec.name),
            resident={},
            threads=0,
            on_step=record.on_step,
            on_log=record.lines.append,
            on_update=record.on_update,
            **fields,
        )
        return context, record

    return make


# -- the backend contract's fixtures (`gateway.testing.contract`) ----------------------


@pytest.fixture(scope="class")
def contract_spec(request: pytest.FixtureRequest) -> ModelSpec:
    """The model a `BackendContract` subclass describes."""
    cls = request.cls
    return ModelSpec(
        name=cls.model_name, backend=cls.backend, source=cls.source, options=dict(cls.options)
    )


@pytest_asyncio.fixture(scope="class", loop_scope="session")
async def contract_backend(
    request: pytest.FixtureRequest, contract_spec: ModelSpec, gateway_data_dir: Path
) -> AsyncIterator[Any]:
    """The contract's backend, built by its registered factory and loaded."""
    from gateway.collect import collect_backends
    from gateway.plugins import make_plugin_manager
    from gateway.settings import Settings

    name = contract_spec.backend
    factories = collect_backends(make_plugin_manager(), Settings(models=[contract_spec]))
    assert name in factories, (
        f"no plugin registers the backend `{name}` (registered: "
        f"{', '.join(sorted(factories))}): is the plugin installed, with an entry point in "
        "the `gateway` group?"
    )
    backend = factories[name](contract_spec, gateway_data_dir)
    await asyncio.wait_for(backend.load(), request.cls.load_timeout)
    yield backend
    await backend.unload()


@pytest.fixture(scope="class")
def contract_client(
    request: pytest.FixtureRequest,
    contract_spec: ModelSpec,
    gateway_data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    """The server serving the contract's model, its plugins found by entry points."""
    folder = tmp_path_factory.mktemp("contract-server")
    shared_models(gateway_data_dir, folder)
    with make_client([contract_spec], folder, timeout=request.cls.load_timeout) as client:
        yield client
