"""The job store contract: states and transitions, progress, metrics and logs, the queue
limit, and claims that several threads or processes make at once.

Every test takes the `store` fixture, which is parametrized over the implementations
(SQLite, and PostgreSQL on a real server started for the session): a new store joins the
list and runs the same suite.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.jobs import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Job,
    JobState,
    JobStore,
    NewJob,
    QueueFull,
    SqliteJobStore,
    StepMetrics,
)
from gateway.jobs.postgres import PostgresJobStore

QUEUED = frozenset({JobState.QUEUED})
RUNNING = frozenset({JobState.RUNNING})
KINDS = frozenset({"sft", "grpo"})


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], JobStore]]:
    """How to open the store again (as a second process, or the server after a restart,
    would): SQLite in the test's folder, or a PostgreSQL database of the test's own on
    the session's server."""
    opened: list[JobStore] = []
    if request.param == "sqlite":
        yield lambda: SqliteJobStore.in_data_dir(tmp_path)
        return
    url = request.getfixturevalue("postgres").database_for(str(tmp_path))

    def make() -> JobStore:
        opened.append(PostgresJobStore(url))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(opener: Callable[[], JobStore]) -> JobStore:
    return opener()


def new(kind: str = "sft", model: str = "m", **fields: object) -> NewJob:
    fields.setdefault("output_name", f"{kind}-{uuid.uuid4().hex[:8]}")
    return NewJob(kind=kind, model=model, **fields)  # type: ignore[arg-type]


def metrics(step: int, loss: float = 1.0) -> StepMetrics:
    return StepMetrics(step=step, epoch=step / 10, loss=loss, learning_rate=1e-4, time=step * 0.5)


def running(store: JobStore, **fields: object) -> Job:
    """A job submitted and claimed by worker `w1` (of a model of its own unless told)."""
    fields.setdefault("model", f"solo-{uuid.uuid4().hex[:8]}")
    job = store.submit(new(**fields))  # type: ignore[arg-type]
    claimed = store.claim(job.model, "w1", frozenset({job.kind}))
    assert claimed is not None and claimed.id == job.id
    return claimed


# ---- submitting and reading ---------------------------------------------------------------


def test_submit_stores_a_queued_job(store: JobStore):
    job = store.submit(new(config={"epochs": 3}, data=[{"messages": []}]))
    assert job.state == JobState.QUEUED
    assert str(uuid.UUID(job.id, version=4)) == job.id
    assert job.config == {"epochs": 3}
    assert job.data is None  # loaded only on request
    assert job.created_at > 0 and job.started_at is None and job.finished_at is None
    assert (job.step, job.total_steps, job.loss, job.error, job.worker) == (0, 0, None, None, None)
    assert job.stop_requested is False and job.webhook is None and job.progress == 0.0
    assert store.get(job.id) == job
    assert store.get("no-such-job") is None


def test_submit_keeps_a_chosen_id(store: JobStore):
    job = store.submit(new(id="my-job"))
    assert job.id == "my-job" and store.get("my-job") is not None


def test_config_and_data_round_trip(store: JobStore):
    data = [
        {
            "messages": [
                {"role": "user", "content": 'Zdravo, 世界 \u2014 "quoted" \\ back\nslash 🙂'},
                {"role": "assistant", "content": ""},
            ],
            "completions": [{"text": "a", "reward": -0.25}, {"text": "b", "reward": 1e-300}],
            "nested": {"none": None, "flag": True, "list": [1, 2.5, "x"]},
        }
    ] * 50
    config = {
        "epochs": 3,
        "learning_rate": 1e-4,
        "lora_alpha": 32.0,
        "base_adapter": None,
        "auto_load": False,
        "name": "ünïcode",
    }
    job = store.submit(new(kind="grpo", model="model/with:odd chars", config=config, data=data))
    again = store.get(job.id, with_data=True)
    assert again is not None
    assert again.data == data and again.config == config
    assert again.model == "model/with:odd chars" and again.kind == "grpo"
    claimed = store.claim("model/with:odd chars", "w", frozenset({"grpo"}))
    assert claimed is not None and claimed.data == data and claimed.config == config


def test_find_filters_by_state_kind_and_model_oldest_first(store: JobStore):
    a = store.submit(new("sft", "m1"))
    b = store.submit(new("grpo", "m1"))
    c = store.submit(new("sft", "m2"))
    d = store.submit(new("finetune", "m1"))
    store.claim("m1", "w", frozenset({"grpo"}))  # b runs
    store.cancel_queued(d.id)

    def ids(**filters: object) -> list[str]:
        return [job.id for job in store.find(**filters)]  # type: ignore[arg-type]

    assert ids() == [a.id, b.id, c.id, d.id]
    assert ids(states=QUEUED) == [a.id, c.id]
    assert ids(states=ACTIVE_STATES) == [a.id, b.id, c.id]
    assert ids(states=TERMINAL_STATES) == [d.id]
    assert ids(kinds=frozenset({"sft"})) == [a.id, c.id]
    assert ids(kinds=KINDS, model="m1") == [a.id, b.id]
    assert ids(states=QUEUED, kinds=frozenset({"sft"}), model="m2") == [c.id]
    assert ids(model="elsewhere") == []
    assert ids(states=frozenset()) == []
    assert all(job.data is None for job in store.find())


def test_position_counts_the_queued_jobs_of_the_same_model(store: JobStore):
    a, b = store.submit(new(model="m1")), store.submit(new(model="m1"))
    other = store.submit(new(model="m2"))
    c = store.submit(new(model="m1"))
    assert [store.position(j.id) for j in (a, b, other, c)] == [1, 2, 1, 3]
    store.cancel_queued(b.id)
    assert [store.position(j.id) for j in (a, b, c)] == [1, None, 2]
    store.claim("m1", "w", KINDS)  # a
    assert [store.position(j.id) for j in (a, c)] == [None, 1]
    assert store.position("no-such-job") is None


def test_max_queued_refuses_with_queue_full(store: JobStore):
    jobs = [store.submit(new(model=f"m{i % 2}"), max_queued=3) for i in range(3)]
    with pytest.raises(QueueFull) as full:
        store.submit(new(), max_queued=3)
    assert full.value.args == (3,)
    assert len(store.find()) == 3  # nothing was stored
    store.submit(new(), max_queued=None)  # no limit: accepted
    store.claim("m0", "w", KINDS)  # a running job does not count
    store.cancel_queued(jobs[1].id)  # nor does a cancelled one
    assert len(store.find(states=QUEUED)) == 2
    store.submit(new(), max_queued=3)
    with pytest.raises(QueueFull):
        store.submit(new(), max_queued=3)


def test_jobs_survive_reopening(opener: Callable[[], JobStore]):
    first = opener()
    queued = first.submit(new(data=[1, 2, 3]))
    run = running(first)
    first.record_step(run.id, metrics(1, 0.5), 4)
    first.log(run.id, "hello")
    again = opener()
    assert again.get(queued.id, with_data=True).data == [1, 2, 3]  # type: ignore[union-attr]
    assert again.get(run.id) == first.get(run.id)
    assert [m.loss for m in again.metrics(run.id)] == [0.5]
    assert [line.message for line in again.logs(run.id)] == ["hello"]


# ---- claiming and running -----------------------------------------------------------------


def test_claim_takes_the_oldest_job_of_the_model_and_kinds(store: JobStore):
    a = store.submit(new("sft", "m1", data=["a"]))
    b = store.submit(new("grpo", "m1", data=["b"]))
    c = store.submit(new("sft", "m2", data=["c"]))
    assert store.claim("m1", "w", frozenset({"finetune"})) is None
    assert store.claim("m3", "w", KINDS) is None
    got = store.claim("m1", "worker-7", frozenset({"grpo"}))
    assert got is not None and got.id == b.id
    assert got.state == JobState.RUNNING and got.worker == "worker-7"
    assert got.started_at is not None and got.started_at >= got.created_at
    assert got.data == ["b"]  # a claim loads the data
    got = store.claim("m1", "worker-7", KINDS)
    assert got is not None and got.id == a.id
    assert store.claim("m1", "worker-7", KINDS) is None
    assert store.get(c.id).state == JobState.QUEUED  # type: ignore[union-attr]
    assert store.claim("m1", "w", frozenset()) is None


def test_record_step_updates_progress_and_appends_metrics(store: JobStore):
    job = running(store)
    for step, loss in enumerate([2.0, 1.5, 1.25], start=1):
        assert store.record_step(job.id, metrics(step, loss), 4) is True
    now = store.get(job.id)
    assert now is not None
    assert (now.step, now.total_steps, now.epoch, now.loss, now.learning_rate) == (
        3,
        4,
        0.3,
        1.25,
        1e-4,
    )
    assert now.progress == 0.75
    assert store.metrics(job.id) == [metrics(1, 2.0), metrics(2, 1.5), metrics(3, 1.25)]
    assert store.metrics(job.id, limit=2) == [metrics(2, 1.5), metrics(3, 1.25)]
    assert store.metrics("no-such-job") == []


def test_record_step_is_refused_after_a_stop_request(store: JobStore):
    job = running(store)
    assert store.record_step(job.id, metrics(1, 2.0), 10)
    stopping = store.request_stop(job.id)
    assert stopping is not None and stopping.stop_requested and stopping.state == JobState.RUNNING
    assert store.record_step(job.id, metrics(2, 1.0), 10) is False
    now = store.get(job.id)
    assert now is not None and now.step == 1 and now.loss == 2.0
    assert [m.step for m in store.metrics(job.id)] == [1]  # the refused step is not kept


def test_record_step_is_refused_when_the_job_is_not_running(store: JobStore):
    queued = store.submit(new())
    assert store.record_step(queued.id, metrics(1), 10) is False
    done = running(store)
    store.finish(done.id, JobState.FAILED, error="boom")
    assert store.record_step(done.id, metrics(1), 10) is False
    assert store.record_step("no-such-job", metrics(1), 10) is False
    assert store.metrics(queued.id) == store.metrics(done.id) == []
    assert store.get(queued.id).step == 0  # type: ignore[union-attr]


def test_tenant_and_info_are_stored_and_filtered(store: JobStore):
    mine = store.submit(new(kind="distillation", tenant="acme", info={"name": "v1"}))
    store.submit(new(kind="distillation", tenant="other"))
    assert (mine.tenant, mine.info, mine.cost) == ("acme", {"name": "v1"}, 0.0)
    assert [j.id for j in store.find(tenant="acme")] == [mine.id]


def test_update_merges_info_and_accrues_cost(store: JobStore):
    job = running(store, info={"name": "v1", "progress": {"a": 1}})
    assert store.update(job.id, {"phase": "curation", "progress": {"b": 2}}, add_cost=0.25)
    assert store.update(job.id, {"progress": {"a": 3}, "name": "v2"}, add_cost=0.5)
    now = store.get(job.id)
    assert now is not None
    assert now.info == {"name": "v2", "phase": "curation", "progress": {"a": 3, "b": 2}}
    assert now.cost == 0.75


def test_update_after_a_stop_request_keeps_the_cost_and_says_stop(store: JobStore):
    job = running(store)
    store.request_stop(job.id)
    assert store.update(job.id, {"phase": "training"}, add_cost=1.5) is False
    now = store.get(job.id)
    assert now is not None and now.cost == 1.5 and now.info == {"phase": "training"}
    queued = store.submit(new())
    assert store.update(queued.id, {"phase": "x"}, add_cost=1.0) is False
    after = store.get(queued.id)
    assert after is not None and after.cost == 0.0 and after.info == {}


def test_a_database_from_before_tenants_gets_the_new_columns(tmp_path: Path):
    import sqlite3

    path = tmp_path / "gateway.db"
    with sqlite3.connect(path) as db:  # the first release's table, with one job in it
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT NOT NULL,"
            " model TEXT NOT NULL, state TEXT NOT NULL, output_name TEXT NOT NULL,"
            " config TEXT NOT NULL, data TEXT NOT NULL, created_at REAL NOT NULL,"
            " started_at REAL, finished_at REAL, step INTEGER NOT NULL DEFAULT 0,"
            " total_steps INTEGER NOT NULL DEFAULT 0, epoch REAL NOT NULL DEFAULT 0, loss REAL,"
            " learning_rate REAL, error TEXT, adapter_path TEXT,"
            " stop_requested INTEGER NOT NULL DEFAULT 0, worker TEXT, webhook TEXT)"
        )
        db.execute(
            "INSERT INTO jobs (id, seq, kind, model, state, output_name, config, data,"
            " created_at) VALUES ('old', 1, 'sft', 'm', 'queued', 'o', '{}', '[]', 1.0)"
        )
    store = SqliteJobStore(path)
    old = store.get("old")
    assert old is not None and (old.tenant, old.info, old.cost) == (None, {}, 0.0)
    assert store.submit(new(tenant="t")).tenant == "t"


def test_requeue_running_queues_resumable_jobs_again_a_bounded_number_of_times(
    store: JobStore,
):
    job = running(store, kind="distillation", info={"name": "d"})
    other = running(store, kind="sft")
    for restart in (1, 2):
        again = store.requeue_running(frozenset({"distillation"}), max_restarts=2)
        assert [j.id for j in again] == [job.id]
        assert again[0].state == JobState.QUEUED and again[0].worker is None
        assert again[0].info == {"name": "d", "restarts": restart}
        claimed = store.claim(job.model, "w2", frozenset({"distillation"}))
        assert claimed is not None and claimed.id == job.id
    assert store.requeue_running(frozenset({"distillation"}), max_restarts=2) == []
    still = store.get(job.id)
    assert still is not None and still.state == JobState.RUNNING  # left for fail_running
    kept = store.get(other.id)
    assert kept is not None and kept.state == JobState.RUNNING
    assert store.requeue_running(frozenset(), max_restarts=2) == []


def test_requeue_running_of_one_worker(store: JobStore):
    job = running(store, kind="distillation")
    assert store.requeue_running(frozenset({"distillation"}), max_restarts=3, worker="w9") == []
    again = store.requeue_running(frozenset({"distillation"}), max_restarts=3, worker="w1")
    assert [j.id for j in again] == [job.id]


def test_logs_in_order_with_a_limit(store: JobStore):
    job = running(store)
    for i in range(5):
        store.log(job.id, f"line {i}")
    store.log("other-job", "not mine")
    assert [line.message for line in store.logs(job.id)] == [f"line {i}" for i in range(5)]
    assert [line.message for line in store.logs(job.id, limit=2)] == ["line 3", "line 4"]
    times = [line.time for line in store.logs(job.id)]
    assert times == sorted(times) and times[0] > 0


# ---- ending jobs --------------------------------------------------------------------------


def test_finish_completes_a_running_job(store: JobStore):
    job = running(store)
    store.record_step(job.id, metrics(1), 4)
    done = store.finish(job.id, JobState.COMPLETED, adapter_path="/adapters/x", webhook=True)
    assert done is not None
    assert done.state == JobState.COMPLETED and done.adapter_path == "/adapters/x"
    assert done.finished_at is not None and done.finished_at >= done.started_at  # type: ignore[operator]
    assert done.webhook == "pending" and done.progress == 1.0 and done.error is None
    assert store.get(job.id) == done


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_finish_of_a_job_that_is_not_running_changes_nothing(store: JobStore, state: JobState):
    queued = store.submit(new())
    assert store.finish(queued.id, state) is None
    assert store.get(queued.id) == queued
    job = running(store)
    first = store.finish(job.id, JobState.FAILED, error="first")
    assert store.finish(job.id, state, error="second") is None
    assert store.get(job.id) == first
    assert store.finish("no-such-job", state) is None


@pytest.mark.parametrize("state", sorted(ACTIVE_STATES))
def test_finish_needs_a_terminal_state(store: JobStore, state: JobState):
    job = running(store)
    with pytest.raises(ValueError, match="cannot finish"):
        store.finish(job.id, state)
    assert store.get(job.id).state == JobState.RUNNING  # type: ignore[union-attr]


def test_cancel_queued_only_cancels_queued_jobs(store: JobStore):
    queued = store.submit(new())
    cancelled = store.cancel_queued(queued.id, webhook=True)
    assert cancelled is not None
    assert cancelled.state == JobState.CANCELLED and cancelled.finished_at is not None
    assert cancelled.error and "queued" in cancelled.error.lower()
    assert cancelled.webhook == "pending"
    assert store.cancel_queued(queued.id) is None  # already cancelled
    assert store.claim("m", "w", KINDS) is None  # never runs
    job = running(store)
    assert store.cancel_queued(job.id) is None
    assert store.get(job.id).state == JobState.RUNNING  # type: ignore[union-attr]
    assert store.cancel_queued("no-such-job") is None
    quiet = store.cancel_queued(store.submit(new()).id)
    assert quiet is not None and quiet.webhook is None


def test_request_stop_only_stops_running_jobs(store: JobStore):
    queued = store.submit(new())
    assert store.request_stop(queued.id) is None
    assert store.get(queued.id).stop_requested is False  # type: ignore[union-attr]
    job = running(store)
    assert store.request_stop(job.id).stop_requested is True  # type: ignore[union-attr]
    ended = store.finish(job.id, JobState.CANCELLED, error="stopped")
    assert ended is not None and ended.state == JobState.CANCELLED
    assert store.request_stop(job.id) is None
    assert store.request_stop("no-such-job") is None


def test_fail_running_fails_every_running_job_or_one_workers(store: JobStore):
    mine = running(store, model="m1")
    store.record_step(mine.id, metrics(3), 8)
    theirs = store.submit(new(model="m2"))
    store.claim("m2", "w2", KINDS)
    queued = store.submit(new(model="m1"))
    failed = store.fail_running("died at step {step} of {total}", worker="w1", webhook=True)
    assert [job.id for job in failed] == [mine.id]
    assert failed[0].state == JobState.FAILED and failed[0].error == "died at step 3 of 8"
    assert failed[0].webhook == "pending" and failed[0].finished_at is not None
    assert store.get(theirs.id).state == JobState.RUNNING  # type: ignore[union-attr]
    rest = store.fail_running("restart at {step}/{total}")
    assert [job.id for job in rest] == [theirs.id]
    assert rest[0].error == "restart at 0/?" and rest[0].webhook is None
    assert store.get(queued.id).state == JobState.QUEUED  # type: ignore[union-attr]
    assert store.fail_running("again") == []


def test_fail_queued_fails_the_queued_jobs_of_one_model(store: JobStore):
    job = running(store, model="m1")
    a, b = store.submit(new(model="m1")), store.submit(new(model="m1"))
    other = store.submit(new(model="m2"))
    failed = store.fail_queued("m1", "no worker could start")
    assert sorted(j.id for j in failed) == sorted([a.id, b.id])
    for ended in failed:
        assert ended.state == JobState.FAILED and ended.error == "no worker could start"
        assert ended.webhook == "pending" and ended.finished_at is not None
        assert store.get(ended.id) == ended
    assert store.get(other.id).state == JobState.QUEUED  # type: ignore[union-attr]
    assert store.get(job.id).state == JobState.RUNNING  # type: ignore[union-attr]
    assert store.fail_queued("m1", "again") == []


def test_set_webhook_records_the_outcome(store: JobStore):
    job = running(store)
    store.finish(job.id, JobState.COMPLETED, webhook=True)
    store.set_webhook(job.id, "sent")
    assert store.get(job.id).webhook == "sent"  # type: ignore[union-attr]


# ---- several claimants at once ------------------------------------------------------------


def test_threads_claiming_at_once_never_share_a_job(store: JobStore):
    submitted = {store.submit(new(kind="sft" if i % 2 else "grpo")).id for i in range(60)}
    start = threading.Barrier(6)

    def claim_all(worker: str) -> list[str]:
        start.wait()
        claimed = []
        while (job := store.claim("m", worker, KINDS)) is not None:
            claimed.append(job.id)
        return claimed

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(claim_all, [f"t{i}" for i in range(6)]))
    everything = [job_id for claimed in results for job_id in claimed]
    assert len(everything) == len(set(everything)) == len(submitted)
    assert set(everything) == submitted
    for worker, claimed in zip([f"t{i}" for i in range(6)], results, strict=True):
        assert all(store.get(job_id).worker == worker for job_id in claimed)  # type: ignore[union-attr]


def open_at(where: str) -> JobStore:
    """The store at `where`: a PostgreSQL URL, or an SQLite data directory."""
    if where.startswith("postgresql://"):
        return PostgresJobStore(where)
    return SqliteJobStore.in_data_dir(Path(where))


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where processes racing each other open the store (as `open_at` reads it)."""
    if request.param == "sqlite":
        return str(tmp_path)
    return str(request.getfixturevalue("postgres").database_for(str(tmp_path)))


def _claim_in_process(folder: str, worker: str, start: object) -> list[str]:
    """A process's share of a claiming race: claim until the queue is empty."""
    store = open_at(folder)
    start.wait()  # type: ignore[attr-defined]
    claimed = []
    while (job := store.claim("m", worker, KINDS)) is not None:
        claimed.append(job.id)
    return claimed


def _cancel_in_process(folder: str, job_ids: list[str], start: object) -> list[str]:
    store = open_at(folder)
    start.wait()  # type: ignore[attr-defined]
    return [job_id for job_id in job_ids if store.cancel_queued(job_id) is not None]


def _submit_in_process(folder: str, count: int, limit: int, start: object) -> int:
    store = open_at(folder)
    start.wait()  # type: ignore[attr-defined]
    accepted = 0
    for _ in range(count):
        try:
            store.submit(new(), max_queued=limit)
            accepted += 1
        except QueueFull:
            pass
    return accepted


def _race(where: str, target: Callable[..., object], args: list[tuple[object, ...]]) -> list:
    """Run `target(where, *args[i], barrier)` in one process each, all released at once;
    their results in order."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Barrier(len(args))
        with context.Pool(len(args)) as pool:
            pending = [pool.apply_async(target, (where, *extra, start)) for extra in args]
            return [result.get(timeout=120) for result in pending]


def test_processes_claiming_at_once_never_share_a_job(where: str):
    store = open_at(where)
    submitted = {store.submit(new()).id for _ in range(80)}
    results = _race(where, _claim_in_process, [(f"p{i}",) for i in range(4)])
    everything = [job_id for claimed in results for job_id in claimed]
    assert len(everything) == len(set(everything)) == len(submitted)
    assert set(everything) == submitted
    assert {job.worker for job in store.find()} <= {f"p{i}" for i in range(4)}
    assert all(job.state == JobState.RUNNING for job in store.find())


def test_a_job_is_either_claimed_or_cancelled_never_both(where: str):
    store = open_at(where)
    ids = [store.submit(new()).id for _ in range(60)]
    claimed_a, claimed_b, cancelled = _race(
        where,
        _claim_or_cancel,
        [("claim", "p1", ids), ("claim", "p2", ids), ("cancel", "p3", ids)],
    )
    claimed = set(claimed_a) | set(claimed_b)
    assert not set(claimed_a) & set(claimed_b)
    assert not claimed & set(cancelled)
    assert claimed | set(cancelled) == set(ids)
    for job in store.find():
        assert job.state == (JobState.CANCELLED if job.id in cancelled else JobState.RUNNING)


def _claim_or_cancel(folder: str, action: str, worker: str, ids: list[str], start: object):
    if action == "claim":
        return _claim_in_process(folder, worker, start)
    return _cancel_in_process(folder, ids, start)


def test_processes_submitting_at_once_respect_the_queue_limit(where: str):
    open_at(where).find()  # the database exists
    accepted = _race(where, _submit_in_process, [(25, 60)] * 4)
    store = open_at(where)
    queued = store.find(states=QUEUED)
    assert sum(accepted) == len(queued) == 60
    # Every job got a place of its own: positions are exactly 1..60.
    assert sorted(store.position(job.id) for job in queued) == list(range(1, 61))  # type: ignore[type-var]


# ---- leases (a shared store: PostgreSQL) ---------------------------------------------------


def test_a_heartbeat_renews_only_that_workers_running_jobs(store: JobStore):
    first, second = store.submit(new()), store.submit(new())
    store.claim("m", "w1", KINDS)
    store.claim("m", "w2", KINDS)
    before = {job.id: job.heartbeat_at for job in store.find()}
    assert all(before.values())  # a claim starts the lease
    time.sleep(0.02)
    assert store.heartbeat("w1") == 1
    after = {job.id: job.heartbeat_at for job in store.find()}
    assert after[first.id] > before[first.id] and after[second.id] == before[second.id]
    assert store.heartbeat("nobody") == 0


def test_only_jobs_whose_lease_ran_out_are_requeued_or_failed(store: JobStore):
    store.submit(new(kind="distillation", id="stale-resumable"))
    store.submit(new(kind="sft", id="stale"))
    store.submit(new(kind="sft", id="alive"))
    for worker in ("dead-1", "dead-2", "alive-1"):
        store.claim("m", worker, frozenset({"distillation", "sft"}))
    time.sleep(0.3)
    store.heartbeat("alive-1")
    kinds = frozenset({"distillation"})
    requeued = store.requeue_running(kinds, max_restarts=3, stale_after=0.2)
    assert [job.id for job in requeued] == ["stale-resumable"]
    failed = store.fail_running("abandoned at {step}", stale_after=0.2)
    assert [job.id for job in failed] == ["stale"]
    assert store.get("alive").state == JobState.RUNNING  # type: ignore[union-attr]


def test_threads_using_a_new_store_at_once_all_find_it_ready(opener: Callable[[], JobStore]):
    store = opener()  # nothing opened yet: the first calls make the schema
    start = threading.Barrier(6)

    def first_use(index: int) -> str:
        start.wait()
        return store.submit(new(id=f"first-{index}")).id

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(first_use, range(6)))
    assert sorted(job.id for job in store.find()) == sorted(ids)
