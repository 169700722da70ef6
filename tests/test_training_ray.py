"""Jobs on a Ray cluster (`[jobs] runner = "ray"`): a real local cluster (`ray start
--head` on a free port: the `ray_cluster` fixture), the gateway connecting to it by
address. The echo model and `StepTrainer` show the life cycle: progress into the job
store, two jobs at once, a stop reaching the task, a task killed on its node. The real
model's SFT job on the cluster, shared by two gateway replicas, is in test_replicas.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from live import free_port

import gateway.testing.trainers
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.jobs import Job, JobState
from gateway.plugins import make_plugin_manager
from gateway.settings import JobsSettings, Settings, TrainingSettings

pytest.importorskip("ray", reason="Ray is in the test extra: pip install -e '.[test]'")

MODEL = ModelSpec(name="echo", backend="echo", options={"adapters": True})


def make_gateway(data_dir: Path, address: str, models: list[ModelSpec] | None = None) -> Gateway:
    pm = make_plugin_manager()
    pm.register(gateway.testing.trainers)
    settings = Settings(
        data_dir=str(data_dir),
        models=models or [MODEL],
        training=TrainingSettings(jobs_per_model=2, lease_seconds=4),
        jobs=JobsSettings(runner="ray", ray_address=address, ray_cpus=1),
    )
    return Gateway(settings, pm=pm)


@pytest.fixture
async def gw(ray_cluster: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    served = make_gateway(tmp_path, ray_cluster)
    await served.startup()
    yield served
    await served.shutdown()


async def wait_for(gw: Gateway, job_id: str, *states: JobState, timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = await gw.training.get(job_id)
        if job.state in states:
            return job
        assert time.monotonic() < deadline, f"job stayed {job.state}: {job}"
        await asyncio.sleep(0.1)


async def task_pid(gw: Gateway, job_id: str) -> int:
    """The pid of the Ray worker process running the job, from its `started` log line."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in await gw.training.logs(job_id):
            found = re.search(r"started .* pid (\d+) on ", line.message)
            if found:
                return int(found.group(1))
        await asyncio.sleep(0.1)
    raise AssertionError("the job never started on the cluster")


async def test_a_job_runs_as_a_ray_task_and_reports_into_the_job_store(gw: Gateway):
    job, _ = await gw.training.submit("steps", [1, 2], {"steps": 4}, output_name="fix")
    done = await wait_for(gw, job.id, JobState.COMPLETED, JobState.FAILED)
    assert done.state == JobState.COMPLETED, done.error
    assert done.worker is not None and done.worker.startswith("ray:")
    assert (done.step, done.total_steps) == (4, 4)
    assert [m.step for m in await gw.training.metrics(job.id)] == [1, 2, 3, 4]
    messages = [line.message for line in await gw.training.logs(job.id)]
    assert any("submitted to the Ray cluster" in m for m in messages)
    pid = await task_pid(gw, job.id)
    assert pid != os.getpid()
    # The adapter the task wrote into the data directory is the model's default now.
    backend = gw.models.handle("echo").backend
    assert [ref.name for ref in backend.adapters.default()] == ["fix"]
    assert gw.training.supervisor.describe() == []  # nothing left on the cluster


async def test_two_jobs_run_at_once_on_the_cluster(gw: Gateway):
    first, _ = await gw.training.submit("steps", [1], {"steps": 6, "step_seconds": 0.3})
    second, _ = await gw.training.submit("steps", [1], {"steps": 6, "step_seconds": 0.3})
    running = await wait_for(gw, second.id, JobState.RUNNING)
    assert (await gw.training.get(first.id)).state == JobState.RUNNING
    assert {t["job"] for t in gw.training.supervisor.describe()} == {first.id, second.id}
    assert running.worker != (await gw.training.get(first.id)).worker
    for job in (first, second):
        assert (await wait_for(gw, job.id, JobState.COMPLETED)).step == 6


async def test_stop_reaches_the_job_on_the_cluster(gw: Gateway):
    job, _ = await gw.training.submit("steps", [1], {"steps": 200, "step_seconds": 0.1})
    await task_pid(gw, job.id)
    await gw.training.stop_job(job.id)
    stopped = await wait_for(gw, job.id, JobState.CANCELLED, JobState.COMPLETED)
    assert stopped.state == JobState.CANCELLED
    assert stopped.step < 200


async def test_a_task_killed_on_its_node_fails_its_job_and_the_queue_goes_on(gw: Gateway):
    doomed, _ = await gw.training.submit("steps", [1], {"steps": 200, "step_seconds": 0.1})
    os.kill(await task_pid(gw, doomed.id), signal.SIGKILL)
    failed = await wait_for(gw, doomed.id, JobState.FAILED, JobState.COMPLETED)
    assert failed.state == JobState.FAILED
    assert failed.error is not None and "Ray task ended unexpectedly" in failed.error
    after, _ = await gw.training.submit("steps", [1], {"steps": 2})
    assert (await wait_for(gw, after.id, JobState.COMPLETED, JobState.FAILED)).step == 2


def test_without_ray_installed_the_server_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from gateway.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # what an import of a missing package does
    with pytest.raises(ConfigError, match=r"pip install 'gateway\[ray\]'"):
        make_gateway(tmp_path, "127.0.0.1:1")


UNREACHABLE = """
import asyncio, json, sys, time
import gateway.testing.trainers
from gateway.engine import ModelSpec
from gateway.gateway import Gateway
from gateway.jobs import JobState
from gateway.plugins import make_plugin_manager
from gateway.settings import JobsSettings, Settings

async def main():
    pm = make_plugin_manager()
    pm.register(gateway.testing.trainers)
    settings = Settings(
        data_dir=sys.argv[1],
        models=[ModelSpec(name="echo", backend="echo", options={"adapters": True})],
        jobs=JobsSettings(runner="ray", ray_address=sys.argv[2], ray_connect_timeout=1),
    )
    gw = Gateway(settings, pm=pm)
    await gw.startup()
    job, _ = await gw.training.submit("steps", [1], {"steps": 1})
    for _ in range(200):
        said = [line.message for line in await gw.training.logs(job.id)]
        if said:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.5)  # more looks at the queue: the job stays queued
    state = (await gw.training.get(job.id)).state
    started = time.monotonic()
    await gw.shutdown()
    print(json.dumps({"state": state, "said": said, "shutdown": time.monotonic() - started}))

asyncio.run(main())
"""


def test_an_unreachable_cluster_leaves_jobs_queued_saying_why(tmp_path: Path):
    """`ray.init` waits for ever for a cluster that does not answer: the server gives up
    after `ray_connect_timeout`, keeps the job queued, says why in its log, and stops
    without waiting for the attempt (a process of its own: the attempt lingers)."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE, str(tmp_path), address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["state"] == "queued"
    assert len(found["said"]) == 1, found  # said once, not at every look
    assert "waiting for the Ray cluster, which cannot be reached" in found["said"][0]
    assert "within 1 s" in found["said"][0]
