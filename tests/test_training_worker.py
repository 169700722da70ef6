"""Training jobs end to end without a model: the service, the supervisor and real worker
processes running `StepTrainer` (gateway.testing.trainers) for an echo model that declares
adapters. Kills, restarts, stops and failures; the real-model runs are in
test_training_live.py."""

from __future__ import annotations

import asyncio
import http.server
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from live import http_server

import gateway.testing.trainers
from gateway.engine import ModelSpec
from gateway.errors import Conflict
from gateway.gateway import Gateway
from gateway.jobs import Job, JobState, NewJob, SqliteJobStore
from gateway.plugins import make_plugin_manager
from gateway.settings import Settings, TrainingSettings

MODEL = ModelSpec(name="echo", backend="echo", options={"adapters": True})


def make_gateway(data_dir: Path, database_url: str | None = None, **training: Any) -> Gateway:
    pm = make_plugin_manager()
    pm.register(gateway.testing.trainers)
    settings = Settings(
        data_dir=str(data_dir),
        database_url=database_url,
        models=[MODEL],
        training=TrainingSettings(**training),
    )
    return Gateway(settings, pm=pm)


@pytest.fixture(params=["sqlite", "postgres"])
async def gw(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The server and its workers, with jobs in SQLite or in PostgreSQL."""
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").database_for(str(tmp_path))
    served = make_gateway(tmp_path, url)
    await served.startup()
    yield served
    await served.shutdown()


async def wait_for(gw: Gateway, job_id: str, *states: JobState, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = await gw.training.get(job_id)
        if job.state in states:
            return job
        assert time.monotonic() < deadline, f"job stayed {job.state}: {job}"
        await asyncio.sleep(0.05)


async def wait_until(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_a_job_runs_in_a_worker_process_and_its_adapter_becomes_the_default(gw: Gateway):
    job, position = await gw.training.submit("steps", [1, 2], {"steps": 4}, output_name="fix")
    assert (job.state, position, job.model, job.output_name) == ("queued", 1, "echo", "fix")
    done = await wait_for(gw, job.id, JobState.COMPLETED, JobState.FAILED)
    assert done.state == JobState.COMPLETED, done.error
    assert (done.step, done.total_steps, done.progress) == (4, 4, 1.0)
    assert done.worker and str(os.getpid()) in done.worker  # the server's worker, not us
    metrics = await gw.training.metrics(job.id)
    assert [m.step for m in metrics] == [1, 2, 3, 4]
    assert [m.loss for m in metrics] == [1.0, 0.5, 1 / 3, 0.25]
    assert any("trained on 2 items" in line.message for line in await gw.training.logs(job.id))
    store = gw.models.handle("echo").backend.adapters
    assert store.exists("fix") and done.adapter_path == str(store.path("fix"))
    await wait_until(lambda: _default_is(store, ["fix"]))
    (worker,) = gw.training.supervisor.workers.values()
    assert worker.pid != os.getpid()


async def _default_is(store: Any, names: list[str]) -> bool:
    return [ref.name for ref in await asyncio.to_thread(store.default)] == names


async def test_auto_load_false_leaves_the_default_alone(gw: Gateway):
    job, _ = await gw.training.submit("steps", [1], {"auto_load": False}, output_name="quiet")
    await wait_for(gw, job.id, JobState.COMPLETED)
    await asyncio.sleep(0.2)
    assert await _default_is(gw.models.handle("echo").backend.adapters, [])


async def test_a_failing_job_ends_failed_with_its_reason_and_the_worker_goes_on(gw: Gateway):
    bad, _ = await gw.training.submit("steps", [1], {"fail_at": 2})
    good, _ = await gw.training.submit("steps", [1], {})
    failed = await wait_for(gw, bad.id, JobState.FAILED, JobState.COMPLETED)
    assert failed.state == JobState.FAILED
    assert failed.error == "RuntimeError: failing at step 2 as asked"
    assert (await wait_for(gw, good.id, JobState.COMPLETED, JobState.FAILED)).state == "completed"
    assert not gw.models.handle("echo").backend.adapters.exists(bad.output_name)


async def test_jobs_run_one_at_a_time_in_order(gw: Gateway):
    jobs = [(await gw.training.submit("steps", [1], {"steps": 2}))[0] for _ in range(3)]
    positions = [await gw.training.position(j.id) for j in jobs]
    assert positions[1:] == [2, 3] or positions[1:] == [1, 2]  # the first may have started
    done = [await wait_for(gw, j.id, JobState.COMPLETED) for j in jobs]
    for before, after in itertools.pairwise(done):
        assert before.finished_at is not None and after.started_at is not None
        assert before.finished_at <= after.started_at


async def test_cancelling_a_queued_job_and_refusing_a_running_one(tmp_path: Path):
    gw = make_gateway(tmp_path)
    await gw.startup()
    try:
        slow, _ = await gw.training.submit("steps", [1], {"steps": 200, "step_seconds": 0.05})
        queued, _ = await gw.training.submit("steps", [1], {})
        await wait_for(gw, slow.id, JobState.RUNNING)
        cancelled = await gw.training.cancel(queued.id)
        assert cancelled.state == JobState.CANCELLED
        with pytest.raises(Conflict) as refused:
            await gw.training.cancel(slow.id)
        assert refused.value.code == "training_job_not_cancellable"
        stopping = await gw.training.stop_job(slow.id)
        assert stopping.stop_requested
        stopped = await wait_for(gw, slow.id, JobState.CANCELLED, JobState.COMPLETED)
        assert stopped.state == JobState.CANCELLED and "Stopped on request" in (stopped.error or "")
        assert not gw.models.handle("echo").backend.adapters.exists(slow.output_name)
    finally:
        await gw.shutdown()


async def test_kill_9_of_the_worker_fails_its_job_and_the_queue_goes_on(gw: Gateway):
    running, _ = await gw.training.submit("steps", [1], {"steps": 400, "step_seconds": 0.05})
    queued, _ = await gw.training.submit("steps", [1], {"steps": 2}, output_name="after")
    job = await wait_for(gw, running.id, JobState.RUNNING)
    await wait_until(lambda: _has_steps(gw, job.id))
    (worker,) = gw.training.supervisor.workers.values()
    os.kill(worker.pid, signal.SIGKILL)
    failed = await wait_for(gw, running.id, JobState.FAILED, JobState.COMPLETED)
    assert failed.state == JobState.FAILED
    assert "training worker stopped unexpectedly (killed by signal 9 (SIGKILL))" in failed.error
    assert not gw.models.handle("echo").backend.adapters.exists(running.output_name)
    done = await wait_for(gw, queued.id, JobState.COMPLETED, JobState.FAILED)
    assert done.state == JobState.COMPLETED and done.worker != failed.worker


async def _has_steps(gw: Gateway, job_id: str) -> bool:
    return (await gw.training.get(job_id)).step > 0


async def test_a_restart_fails_the_interrupted_job_and_runs_the_queued_ones(tmp_path: Path):
    # What a kill -9 of the server leaves: a job marked running by a worker that is gone
    # (its stdin closed with the server, so it exited), and a queued job.
    jobs = SqliteJobStore.in_data_dir(tmp_path)
    jobs.submit(NewJob(id="interrupted", kind="steps", model="echo", output_name="a", data=[1]))
    assert jobs.claim("echo", "a-worker-of-the-dead-server", frozenset({"steps"}))
    jobs.submit(NewJob(id="waiting", kind="steps", model="echo", output_name="b", data=[1]))
    gw = make_gateway(tmp_path)
    await gw.startup()
    try:
        failed = await gw.training.get("interrupted")
        assert failed.state == JobState.FAILED
        assert "The server stopped while this job was running" in (failed.error or "")
        done = await wait_for(gw, "waiting", JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED
    finally:
        await gw.shutdown()


async def test_no_local_worker_keeps_jobs_queued(tmp_path: Path):
    gw = make_gateway(tmp_path, jobs_per_model=0)
    await gw.startup()
    try:
        job, _ = await gw.training.submit("steps", [1], {})
        await asyncio.sleep(1.5)
        assert (await gw.training.get(job.id)).state == JobState.QUEUED
        assert not gw.training.supervisor.workers
    finally:
        await gw.shutdown()


async def test_a_pip_installed_trainer_runs_in_the_worker(gw: Gateway):
    """`shout` comes from the test distribution gateway-example-backend (an entry point
    found only by the test process): the worker gets it through the server's plugins."""
    assert "shout" in gw.training.trainers
    job, _ = await gw.training.submit("shout", ["quiet", "words"], {}, output_name="loud")
    done = await wait_for(gw, job.id, JobState.COMPLETED, JobState.FAILED)
    assert done.state == JobState.COMPLETED, done.error
    weights = Path(done.adapter_path or "") / "adapter_model.safetensors"
    assert weights.read_text() == "QUIET WORDS"


async def test_jobs_per_model_runs_that_many_jobs_at_once(tmp_path: Path):
    gw = make_gateway(tmp_path, jobs_per_model=2)
    await gw.startup()
    try:
        config = {"steps": 400, "step_seconds": 0.05}
        first, _ = await gw.training.submit("steps", [1], config)
        second, _ = await gw.training.submit("steps", [1], config)
        third, _ = await gw.training.submit("steps", [1], {})
        await wait_for(gw, first.id, JobState.RUNNING)
        await wait_for(gw, second.id, JobState.RUNNING)
        assert (await gw.training.get(third.id)).state == JobState.QUEUED
        assert len(gw.training.supervisor.workers) == 2
        for job in (first, second):
            await gw.training.stop_job(job.id)
        assert (await wait_for(gw, third.id, JobState.COMPLETED)).state == "completed"
    finally:
        await gw.shutdown()


async def test_a_second_worker_starts_for_a_job_queued_while_one_runs(tmp_path: Path):
    gw = make_gateway(tmp_path, jobs_per_model=2)
    await gw.startup()
    try:
        config = {"steps": 400, "step_seconds": 0.05}
        first, _ = await gw.training.submit("steps", [1], config)
        await wait_until(lambda: _has_steps(gw, first.id))
        second, _ = await gw.training.submit("steps", [1], config)
        await wait_for(gw, second.id, JobState.RUNNING)
        assert (await gw.training.get(first.id)).state == JobState.RUNNING
        assert len(gw.training.supervisor.workers) == 2
        for job in (first, second):
            await gw.training.stop_job(job.id)
            await wait_for(gw, job.id, JobState.CANCELLED)
    finally:
        await gw.shutdown()


async def test_the_webhook_hears_of_a_cancelled_job(tmp_path: Path):
    calls: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Hook) as url:
        gw = make_gateway(tmp_path, jobs_per_model=0, webhook_url=f"{url}/")
        await gw.startup()
        try:
            job, _ = await gw.training.submit("steps", [1], {}, output_name="never")
            await gw.training.cancel(job.id)
            await wait_until(lambda: _called(calls))
            assert calls == [
                {
                    "job_id": job.id,
                    "job_type": "steps",
                    "status": "cancelled",
                    "adapter_name": "never",
                    "adapter_path": None,
                    "error": "Cancelled while queued.",
                    "timestamp": calls[0]["timestamp"],
                }
            ]
            await wait_until(lambda: _webhook_is(gw, job.id, "sent"))
        finally:
            await gw.shutdown()


async def _called(calls: list[Any]) -> bool:
    return bool(calls)


async def _webhook_is(gw: Gateway, job_id: str, state: str) -> bool:
    return (await gw.training.get(job_id)).webhook == state


async def test_replicas_sharing_postgres_run_each_job_once_and_reap_an_abandoned_one(
    postgres: Any, tmp_path: Path
):
    url = postgres.database_for(str(tmp_path))
    a = make_gateway(tmp_path / "a", url, lease_seconds=1.0)
    await a.startup()
    b = make_gateway(tmp_path / "b", url, lease_seconds=1.0)
    try:
        # A replica that starts while another's worker trains leaves that job alone.
        long, _ = await a.training.submit("steps", [1], {"steps": 30, "step_seconds": 0.05})
        await wait_for(a, long.id, JobState.RUNNING)
        await b.startup()
        jobs = [(await b.training.submit("steps", [1], {"steps": 3}))[0] for _ in range(4)]
        for job in [long, *jobs]:
            done = await wait_for(a, job.id, JobState.COMPLETED, JobState.FAILED)
            assert done.state == JobState.COMPLETED, done.error
            steps = [m.step for m in await b.training.metrics(job.id)]
            assert steps == list(range(1, done.total_steps + 1))  # ran once, by one worker

        # A job whose worker died with its replica: its lease runs out and a replica
        # takes it over, starting it over (it cannot resume)...
        store = a.training.jobs
        store.submit(
            NewJob(
                id="orphan",
                kind="steps",
                model="echo",
                output_name="o",
                data=[1],
                config={"steps": 2},
            )
        )
        assert store.claim("echo", "a-dead-replicas-worker", frozenset({"steps"}))
        taken = await wait_for(b, "orphan", JobState.COMPLETED, JobState.FAILED, timeout=30)
        assert taken.state == JobState.COMPLETED, taken.error
        assert taken.worker != "a-dead-replicas-worker"
        said = [line.message for line in await b.training.logs("orphan")]
        assert "its worker's lease ran out: queued again to start over" in said
        # ... unless no replica has its trainer: then it fails.
        store.submit(NewJob(id="ghost", kind="ghost-kind", model="echo", output_name="g"))
        assert store.claim("echo", "a-dead-replicas-worker", frozenset({"ghost-kind"}))
        reaped = await wait_for(b, "ghost", JobState.FAILED, timeout=30)
        assert "stopped while this job was running" in (reaped.error or "")
    finally:
        await b.shutdown()
        await a.shutdown()
