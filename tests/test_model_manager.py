"""The model manager's rules on echo models (fast): LRU eviction under `max_loaded`, pins,
the memory budget, refusals, shared loads, `?autoload=false`, leases and unloads, run-time
registration, the routes' two dialects and the CLI. `test_model_manager_live.py` drives
real models through the same rules."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.cli import cli
from gateway.engine import ModelSpec
from gateway.engine.memory import HostMemory, MemoryPool
from gateway.engine.models import Limits, ModelManager, ModelState
from gateway.errors import Conflict
from gateway.gateway import Gateway
from gateway.plugins import make_plugin_manager
from gateway.settings import ModelManagerSettings, Settings
from gateway.testing.echo import EchoBackend


def echo(name: str, **fields: Any) -> ModelSpec:
    options = fields.pop("options", {})
    return ModelSpec(name=name, backend="echo", options=options, **fields)


@contextlib.contextmanager
def serve(tmp_path: Path, models: list[ModelSpec], **manager: Any) -> Iterator[TestClient]:
    settings = Settings(
        models=models,
        data_dir=str(tmp_path),
        model_manager=ModelManagerSettings(**manager),
    )
    gateway = Gateway(settings, make_plugin_manager(environ={"GATEWAY_LOAD_PLUGINS": ""}))
    with TestClient(create_app(gateway=gateway)) as client:
        client.app.state["gateway"] = gateway
        wait_until(lambda: gateway.models.all_ready)
        yield client


def wait_until(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def states(client: TestClient) -> dict[str, str]:
    body = client.get("/v1/models/status").json()
    return {row["name"]: row["state"] for row in body["models"]}


def chat(client: TestClient, model: str, text: str = "hi", **extra: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return client.post("/v1/chat/completions", json=body)


@pytest.fixture
def three(tmp_path: Path) -> Iterator[TestClient]:
    """a (startup), b and c (on demand); two at most."""
    models = [echo("a"), echo("b", load="on_demand"), echo("c", load="on_demand")]
    with serve(tmp_path, models, max_loaded=2) as client:
        yield client


def test_requests_load_models_and_the_least_recently_used_one_makes_room(
    three: TestClient,
) -> None:
    assert states(three) == {"a": "ready", "b": "unloaded", "c": "unloaded"}
    assert chat(three, "b").status_code == 200
    assert states(three) == {"a": "ready", "b": "ready", "c": "unloaded"}
    assert chat(three, "a").status_code == 200  # now b is the least recently used
    reply = chat(three, "c", "evict b")
    assert reply.status_code == 200 and "evict b" in reply.text
    assert states(three) == {"a": "ready", "b": "unloaded", "c": "ready"}
    rows = {r["name"]: r for r in three.get("/v1/models/status").json()["models"]}
    assert rows["b"]["evictions"] == 1 and rows["a"]["evictions"] == 0
    assert rows["a"]["requests_served"] == 1 and rows["c"]["requests_served"] == 1
    listed = {m["id"]: m["status"] for m in three.get("/v1/models").json()["data"]}
    assert listed == {
        "a": {"value": "loaded"},
        "b": {"value": "unloaded"},
        "c": {"value": "loaded"},
    }
    metrics = three.get("/metrics").text
    assert 'gateway_model_events_total{event="evict",model="b"} 1.0' in metrics
    assert 'gateway_model_events_total{event="load",model="c"} 1.0' in metrics


def test_a_pinned_model_stays_and_a_load_that_cannot_fit_is_refused(tmp_path: Path) -> None:
    models = [
        echo("a", pin=True),
        echo("b", load="on_demand", pin=True),
        echo("c", load="on_demand"),
    ]
    with serve(tmp_path, models, max_loaded=2) as client:
        assert chat(client, "b").status_code == 200
        reply = chat(client, "c")
        assert reply.status_code == 409, reply.text
        error = reply.json()["error"]
        assert error["code"] == "model_does_not_fit"
        assert "`max_loaded` is 2 and every loaded model is pinned" in error["message"]
        assert states(client) == {"a": "ready", "b": "ready", "c": "unloaded"}
        refused = client.post("/v1/models/load", json={"name": "c"})
        assert refused.status_code == 409 and "pinned" in refused.json()["detail"]
        # an unload makes room
        assert client.post("/v1/models/unload", json={"name": "b"}).status_code == 200
        assert chat(client, "c").status_code == 200


def test_the_memory_budget_evicts_by_measured_size_and_refuses_what_never_fits(
    tmp_path: Path,
) -> None:
    models = [echo("a", load="on_demand"), echo("b", load="on_demand")]
    with serve(tmp_path, models, memory_budget="100MB") as client:
        gateway: Gateway = client.app.state["gateway"]
        a, b = gateway.models.handle("a"), gateway.models.handle("b")
        assert chat(client, "a").status_code == 200
        a.memory = 60 << 20  # as if its load had measured 60 MiB
        b.memory = 50 << 20
        assert chat(client, "b").status_code == 200
        assert states(client) == {"a": "unloaded", "b": "ready"}
        b.memory = 200 << 20
        client.post("/v1/models/unload", json={"name": "b"})
        reply = client.post("/models/load", json={"model": "b"})
        assert reply.status_code == 409
        message = reply.json()["error"]["message"]
        assert "needs about 200 MiB, more than the memory budget of 100 MiB" in message


def test_concurrent_requests_share_one_load(tmp_path: Path) -> None:
    models = [echo("a"), echo("slow", load="on_demand", options={"load_delay": 0.5})]
    with serve(tmp_path, models) as client:
        replies: list[int] = []

        def one() -> None:
            replies.append(chat(client, "slow").status_code)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert replies == [200] * 4
        status = {r["name"]: r for r in client.get("/v1/models/status").json()["models"]}
        assert status["slow"]["loads"] == 1 and status["slow"]["requests_served"] == 4


def test_autoload_false_answers_503_and_a_timeout_bounds_the_wait(tmp_path: Path) -> None:
    models = [echo("a"), echo("b", load="on_demand")]
    with serve(tmp_path, models) as client:
        body = {"model": "b", "messages": [{"role": "user", "content": "x"}]}
        reply = client.post("/v1/chat/completions?autoload=false", json=body)
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "model_not_loaded"
        assert "POST /v1/models/load" in reply.json()["error"]["message"]
        assert states(client)["b"] == "unloaded"
    with serve(tmp_path, models, autoload=False) as client:
        assert chat(client, "b").status_code == 503
    slow = [echo("a"), echo("b", load="on_demand", options={"load_delay": 5})]
    with serve(tmp_path, slow, load_timeout=0.2) as client:
        reply = chat(client, "b")
        assert reply.status_code == 503
        assert "did not load within 0.2 seconds" in reply.json()["error"]["message"]


def test_unload_waits_for_requests_in_flight_or_aborts_them(tmp_path: Path) -> None:
    models = [echo("a", options={"delay": 0.05})]
    with serve(tmp_path, models) as client:
        gateway: Gateway = client.app.state["gateway"]
        results: dict[str, Any] = {}

        def generate() -> None:
            reply = chat(client, "a", "one two three four five six seven eight")
            results["reply"] = reply
            results["done"] = time.monotonic()

        thread = threading.Thread(target=generate)
        thread.start()
        wait_until(lambda: gateway.models.handle("a").in_flight == 1)
        unloaded = client.post("/v1/models/unload", json={"name": "a"})
        ended = time.monotonic()
        thread.join()
        assert unloaded.status_code == 200, unloaded.text
        assert results["reply"].status_code == 200
        assert results["reply"].json()["choices"][0]["finish_reason"] == "stop"
        assert results["done"] <= ended  # the unload waited for the answer
        assert states(client) == {"a": "unloaded"}

        thread = threading.Thread(target=generate)
        thread.start()  # loads a again
        wait_until(lambda: gateway.models.handle("a").in_flight == 1)
        aborted = client.post("/v1/models/unload", json={"name": "a", "abort": True})
        thread.join()
        assert aborted.status_code == 200
        assert results["reply"].status_code == 503
        assert results["reply"].json()["error"]["code"] == "model_unloaded"


def test_an_idle_model_is_unloaded_but_a_pinned_one_stays(tmp_path: Path) -> None:
    models = [echo("a", pin=True, idle_timeout=0.1), echo("b", idle_timeout=0.5)]
    with serve(tmp_path, models) as client:
        assert chat(client, "b").status_code == 200
        wait_until(lambda: states(client)["b"] == "unloaded")
        assert states(client)["a"] == "ready"


def test_models_registered_at_run_time_load_on_demand(tmp_path: Path) -> None:
    with serve(tmp_path, [echo("a")]) as client:
        weights = tmp_path / "tiny.gguf"
        weights.write_bytes(b"GGUF")
        added = client.post(
            "/v1/models", json={"name": "added", "backend": "echo", "source": str(weights)}
        )
        assert added.status_code == 201, added.text
        assert added.json()["status"] == {"value": "unloaded"}
        assert chat(client, "added").status_code == 200
        again = client.post(
            "/models", json={"model": "added", "path": str(weights), "backend": "echo"}
        )
        assert again.status_code == 409
        missing = client.post(
            "/v1/models", json={"name": "x", "source": "/no/such.gguf", "backend": "echo"}
        )
        assert missing.status_code == 400
        assert "neither an existing path nor an installed weights package" in missing.text
        unknown = client.post(
            "/models", json={"model": "y", "path": str(weights), "backend": "nope"}
        )
        assert unknown.status_code == 400 and "Unknown backend `nope`" in unknown.text


def test_models_dir_confines_run_time_sources(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ok.gguf").write_bytes(b"GGUF")
    with serve(tmp_path, [echo("a")], models_dir=str(tmp_path / "models")) as client:
        inside = client.post(
            "/v1/models", json={"name": "ok", "source": "ok.gguf", "backend": "echo"}
        )
        assert inside.status_code == 201, inside.text
        outside = client.post(
            "/v1/models", json={"name": "no", "source": "../models/../x.gguf", "backend": "echo"}
        )
        assert outside.status_code == 400 and "outside the models directory" in outside.text


def test_router_routes_speak_llama_servers_shapes(three: TestClient) -> None:
    assert three.post("/models/load", json={"model": "b"}).json() == {"success": True}
    listed = {m["id"]: m["status"]["value"] for m in three.get("/models").json()["data"]}
    assert listed == {"a": "loaded", "b": "loaded", "c": "unloaded"}
    assert three.post("/models/unload", json={"model": "b"}).json() == {"success": True}
    missing = three.post("/models/load", json={"model": "zzz"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    bad = three.post("/models/load", json={"name": "b"})
    assert bad.status_code == 400 and "model" in bad.json()["error"]["message"]
    npu_bad = three.post("/v1/models/load", json={"model": "b"})
    assert npu_bad.status_code == 422 and "name" in npu_bad.json()["detail"]


def test_model_events_stream_each_change(three: TestClient) -> None:
    gateway: Gateway = three.app.state["gateway"]

    async def collect() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        with gateway.models.events() as queue:
            await gateway.models.load("b")
            await gateway.models.unload("b")
            while not queue.empty():
                seen.append(queue.get_nowait())
        return seen

    with three.portal() as portal:
        events = portal.call(collect)
    assert [(e["model"], e["data"]["status"]) for e in events] == [
        ("b", "loading"),
        ("b", "loaded"),
        ("b", "unloading"),
        ("b", "unloaded"),
    ]
    assert events[1]["event"] == "model_status" and events[1]["data"]["info"]["load_seconds"] >= 0


def test_cli_loads_unloads_and_shows_status(three: TestClient, monkeypatch: Any) -> None:
    """The CLI against the test client's app, through a patched HTTP opener."""
    import urllib.request

    class Answer:
        def __init__(self, reply: Any):
            self.reply = reply

        def read(self) -> bytes:
            return bytes(self.reply.content)

        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *args: Any) -> None:
            pass

    def urlopen(request: urllib.request.Request, timeout: float = 0) -> Answer:
        path = request.full_url.removeprefix("http://testserver")
        body = json.loads(bytes(request.data)) if isinstance(request.data, bytes) else None
        return Answer(three.request(request.get_method(), path, json=body))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    runner = CliRunner()
    url = ["--url", "http://testserver"]
    loaded = runner.invoke(cli, ["models", "load", "b", *url])
    assert loaded.exit_code == 0 and loaded.output.startswith("Loaded b in "), loaded.output
    status = runner.invoke(cli, ["models", "status", *url])
    assert status.exit_code == 0, status.output
    assert "2 loaded (max_loaded: 2)" in status.output
    assert any(line.startswith("b ") and " ready " in line for line in status.output.splitlines())
    unloaded = runner.invoke(cli, ["models", "unload", "b", "--abort", *url])
    assert unloaded.exit_code == 0 and unloaded.output.startswith("Unloaded b"), unloaded.output
    as_json = runner.invoke(cli, ["models", "status", "--json", *url])
    assert {m["name"]: m["state"] for m in json.loads(as_json.output)["models"]}["b"] == "unloaded"


def test_a_request_naming_no_model_loads_the_default_but_a_listing_loads_nothing(
    three: TestClient,
) -> None:
    assert three.post("/v1/models/unload", json={"name": "a"}).status_code == 200
    assert three.get("/v1/models").status_code == 200
    assert three.get("/models").status_code == 200
    assert states(three)["a"] == "unloaded"
    reply = three.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert reply.status_code == 200 and reply.json()["model"] == "a"
    assert states(three)["a"] == "ready"


class FakeDevice(MemoryPool):
    """An accelerator's memory as the manager sees it: 256 MiB, and what loads hold."""

    accelerator = True
    name = "fake:0"

    def __init__(self) -> None:
        self.held: dict[str, int] = {}

    def used(self) -> int:
        return sum(self.held.values())

    def available(self) -> int:
        return (256 << 20) - self.used()

    def total(self) -> int:
        return 256 << 20


class DeviceEcho(EchoBackend):
    """An echo model whose load holds `mib` MiB of `FakeDevice` memory."""

    device = FakeDevice()

    def memory_pool(self) -> MemoryPool:
        return self.device

    def memory_estimate(self) -> int:
        return int(self.spec.options["mib"]) << 20

    async def load(self) -> None:
        self.device.held[self.spec.name] = int(self.spec.options["mib"]) << 20

    async def unload(self) -> None:
        del self.device.held[self.spec.name]


async def test_models_on_an_accelerator_are_weighed_against_its_memory_only(
    tmp_path: Path,
) -> None:
    DeviceEcho.device = FakeDevice()
    specs = [
        ModelSpec(name="host", backend="echo"),
        *(
            ModelSpec(name=name, backend="device", options={"mib": mib})
            for name, mib in [("g1", 60), ("g2", 60), ("huge", 150)]
        ),
    ]
    factories = {"echo": EchoBackend, "device": DeviceEcho}
    limits = Limits(memory_budget=1 << 20, vram_budget=100 << 20)  # host: 1 MiB only
    manager = ModelManager(specs, factories, tmp_path, limits)
    try:
        await manager.load("host")
        await manager.load("g1")  # the host's budget does not count device memory
        g1 = manager.handle("g1")
        assert g1.memory == 60 << 20 and g1.status()["memory_pool"] == "fake:0"
        await manager.load("g2")  # over the VRAM budget: g1 gives way, the host model stays
        states = {h.name: h.state for h in manager}
        assert states["g1"] is ModelState.UNLOADED and g1.freed == 60 << 20
        assert states["g2"] is ModelState.READY and states["host"] is ModelState.READY
        with pytest.raises(Conflict) as refused:
            await manager.load("huge")
        assert "needs about 150 MiB, more than the VRAM budget of 100 MiB" in str(refused.value)
        assert manager.handle("g2").state is ModelState.READY  # refused before evicting

        manager.limits = Limits(memory_budget=1 << 20)  # no VRAM budget: what is free
        await manager.load("huge")  # 256 - 60 free is enough: g2 stays
        assert manager.handle("g2").state is ModelState.READY
        await manager.unload("g2")
        await manager.load("g1")  # 256 - 150 free is enough
        assert DeviceEcho.device.used() == 210 << 20
    finally:
        await manager.unload_all()


def test_the_torch_backend_puts_a_cpu_model_in_host_memory(tmp_path: Path) -> None:
    from gateway_torch.causal import TorchBackend

    backend = TorchBackend(
        ModelSpec(name="m", backend="torch", options={"device": "cpu"}), tmp_path
    )
    assert isinstance(backend.memory_pool(), HostMemory)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
async def test_a_model_on_cuda_is_measured_in_the_devices_memory(
    data_dir: Path, tmp_path: Path
) -> None:
    from gateway_torch.causal import TorchBackend

    (tmp_path / "models").symlink_to((data_dir / "models").resolve(), target_is_directory=True)
    spec = ModelSpec(name="smol", backend="torch", options={"device": "cuda", "slots": 2})
    manager = ModelManager([spec], {"torch": TorchBackend}, tmp_path, Limits())
    try:
        handle = await manager.load("smol")
        assert handle.pool.name.startswith("cuda") and handle.pool.accelerator
        assert handle.memory is not None and handle.memory > 100 << 20  # 135M weights at bf16
        await manager.unload("smol")
        assert handle.freed is not None and handle.freed >= handle.memory * 0.9
    finally:
        await manager.unload_all()
