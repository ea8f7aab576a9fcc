"""Fair dispatch of jobs between tenants against the real broker, FerretDB and Celery
workers: a quiet tenant's job is not queued behind a hostile tenant's quota of jobs, a
worker killed mid-job releases the tenant's next job exactly once, and a release cut
short by a crash at each step is redone exactly once (issue 10, the job flood)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from pymongo.errors import AutoReconnect

from fairway.devtools import celery_workers as worker
from fairway.devtools.processes import free_port, wait_for
from fairway.domain.job_params import parse_report
from fairway.storage import accounts, job_dispatch, job_pool, job_records, registry
from tasks import dispatch
from tasks.celery_app import make_celery
from tests.harness import Pipeline, scrape_metric
from tests.integration.crashing_worker import FLAKY_START, FLAKY_STATE, SLOW_DEVICE, SLOW_S
from tests.integration.test_jobs_api import token, wait_job
from tests.integration.test_tasks import START, insert_readings
from web import create_app

PASSWORD = "correct horse battery"
T0 = START.timestamp()
REPORT = {"from": T0, "to": T0 + 3600, "bucket": 600}
WAITING = {"dispatch": job_records.WAITING}


@pytest.fixture
def app(pipeline: Pipeline) -> Iterator[Flask]:
    """The web app: tenants acme (quiet) and other (hostile), their devices and users."""
    db = pipeline.db
    for tenant in ("acme", "other", "third", "fourth"):
        registry.create_tenant(db, tenant, 1, 1000)
        registry.register_device(db, tenant, f"{tenant}-1")
    registry.register_device(db, "other", SLOW_DEVICE)  # device ids are global
    for user, role, tenant in (("alice", "admin", "acme"), ("mallory", "viewer", "other")):
        accounts.create_user(db, user, PASSWORD, role, tenant)
    times = [START + timedelta(seconds=60 * i) for i in range(60)]
    for tenant in ("acme", "other", "third", "fourth"):
        insert_readings(db, tenant, f"{tenant}-1", times, [{"t": 1.0}] * 60)
    insert_readings(db, "other", SLOW_DEVICE, times[:3], [{"t": 2.0}] * 3)
    flask_app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    yield flask_app
    celery = flask_app.extensions.get("fairway_celery")
    if celery is not None:
        celery.close()
    flask_app.extensions["fairway_db"].client.close()


def start_worker(pipeline: Pipeline, name: str, concurrency: int = 1, **overrides: Any) -> Any:
    """A worker of the test app (slow device, crash device) with a metrics port."""
    settings = type(pipeline.settings).from_env(
        pipeline.settings.environ(), metrics_port=free_port(), **overrides
    )
    proc = worker.start(
        settings,
        pipeline.workdir / f"{name}.log",
        app="tests.integration.crashing_worker",
        concurrency=concurrency,
    )
    proc.metrics_port = settings.metrics_port  # type: ignore[attr-defined]
    return proc


def done_at(pipeline: Pipeline, job_id: str) -> datetime:
    """When Celery stored the job's outcome."""
    meta = pipeline.db[job_records.TASKMETA].find_one({"_id": job_id})
    assert meta is not None and meta["status"] == "SUCCESS", meta
    return meta["date_done"]


def released(tenant: str) -> float:
    """``fairway_jobs_released_total{tenant}`` of this process (the web app's releases)."""
    return REGISTRY.get_sample_value("fairway_jobs_released_total", {"tenant": tenant}) or 0.0


@pytest.mark.settings(jobs_max_per_user=4, jobs_dispatch_interval_s=0.5)
def test_a_quiet_tenants_job_is_not_queued_behind_a_hostile_tenants_quota(
    pipeline: Pipeline, app: Flask
) -> None:
    client = app.test_client()
    alice, mallory = token(pipeline, "alice"), token(pipeline, "mallory")
    slow = {**REPORT, "device": SLOW_DEVICE}
    web_released = released("other")
    proc = start_worker(pipeline, "fair")
    try:
        # The hostile viewer fills its quota with slow jobs (one worker process, each
        # job SLOW_S long); one of them is released, the others wait in the database.
        hostile = [client.post("/api/reports", json=slow, headers=mallory) for _ in range(4)]
        assert [h.status_code for h in hostile] == [202] * 4
        over = client.post("/api/reports", json=slow, headers=mallory)
        assert over.status_code == 429  # the quota still holds
        assert released("other") - web_released == 1
        db = pipeline.db
        ids = [h.get_json()["job"] for h in hostile]
        waiting = [job_records.get_job(db, i)["dispatch"] for i in ids[1:]]  # type: ignore[index]
        assert waiting == ["waiting"] * 3, waiting
        # The API says so, with the tenant's jobs ahead (not Celery's PENDING). The
        # first may already be released by the worker's dispatcher: count from the end.
        shown = [client.get(h.get_json()["url"], headers=mallory).get_json() for h in hostile]
        assert shown[0]["state"] != "WAITING" and shown[0]["ahead"] is None, shown[0]
        assert [(s["state"], s["ahead"]) for s in shown[-2:]] == [("WAITING", 1), ("WAITING", 2)]
        quiet = client.post("/api/reports", json=REPORT, headers=alice)
        assert quiet.status_code == 202
        assert wait_job(client, quiet.get_json()["url"], alice)["state"] == "SUCCESS"
        for h in hostile:
            assert wait_job(client, h.get_json()["url"], mallory)["state"] == "SUCCESS"
        quiet_done = done_at(pipeline, quiet.get_json()["job"])
        hostile_done = sorted(done_at(pipeline, i) for i in ids)
        # Only the hostile job running (or queued) when it came finishes first: the
        # next hostile one was released after that one ended, behind it.
        assert quiet_done < hostile_done[1], (quiet_done, hostile_done)
        # Every hostile job was released once: the first by the web app, the others by
        # the worker's dispatcher as the one before ended.
        for job_id in ids:
            record = job_records.get_job(db, job_id)
            assert record is not None, job_id
            assert (record["release"], record.get("deliveries")) == (1, 1), record
        assert scrape_metric(proc.metrics_port, "fairway_jobs_released_total", tenant="other") == 3
        assert job_records.unfinished(db, job_dispatch.DISPATCH, "other") == 0
        assert job_records.unfinished(db, job_records.TENANT, "other") == 0
    finally:
        worker.stop(proc)


def test_a_release_the_database_failed_after_is_accepted_and_runs_once(
    pipeline: Pipeline, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails between the publish and its mark, and on the claim after it:
    the job is queued, so the submission answers 202 (it answered 500), and it runs once."""

    def lost(db: Any, job: dict[str, Any]) -> None:
        raise AutoReconnect("connection lost after the publish")

    claims: list[str] = []
    claim = job_dispatch.claim_or_defer

    def claim_once(db: Any, tenant: str, *args: Any) -> Any:
        claims.append(tenant)
        if len(claims) > 1:
            raise AutoReconnect("still lost")
        return claim(db, tenant, *args)

    monkeypatch.setattr(job_dispatch, "mark_published", lost)
    monkeypatch.setattr(job_dispatch, "claim_or_defer", claim_once)
    client = app.test_client()
    alice = token(pipeline, "alice")
    submitted = client.post("/api/reports", json=REPORT, headers=alice)
    assert submitted.status_code == 202, submitted.get_json()
    assert claims == ["acme", "acme"]  # the second claim failed after the release
    monkeypatch.undo()
    job_id = submitted.get_json()["job"]
    proc = start_worker(pipeline, "unmarked")
    try:
        assert wait_job(client, submitted.get_json()["url"], alice)["state"] == "SUCCESS"
        record = job_records.get_job(pipeline.db, job_id)
        assert record is not None
        assert (record["release"], record.get("deliveries")) == (1, 1), record
    finally:
        worker.stop(proc)


def test_a_start_check_the_database_fails_is_retried_not_run(
    pipeline: Pipeline, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails on a worker's start check of a release the sweep has since
    superseded: the delivery is retried and then ignored (it ran: beside the later
    release, the job would have run twice)."""
    db, settings = pipeline.db, pipeline.settings
    celery = make_celery(settings)
    try:
        job_id = _waiting_job(pipeline, "acme")
        claimed = job_dispatch.claim_next(
            db, "acme", 1, settings.job_ttl_s, pool=dispatch.pool(settings)
        )
        assert claimed is not None and claimed["release"] == 1
        slot = db[job_records.SLOTS].find_one({"job": job_id, "scope": job_dispatch.DISPATCH})
        again = job_dispatch.reclaim(db, slot)  # the sweep: release 1 superseded by 2
        assert again is not None and again["release"] == 2
        real_start, calls = job_dispatch.start, []

        def flaky(db: Any, job: str, n: int) -> bool:
            calls.append(n)
            if len(calls) == 1:
                raise AutoReconnect("connection lost on the start check")
            return real_start(db, job, n)

        monkeypatch.setattr(job_dispatch, "start", flaky)
        task = celery.tasks[dispatch.TASKS[claimed["kind"]]]
        kwargs = {"tenant": "acme", "user": "alice", "params": claimed["params"], "release": 1}
        result = task.apply(kwargs=kwargs, task_id=job_id)  # in this process (eager)
        assert calls == [1, 1]  # retried, not run on the first answer
        assert result.state == "IGNORED", (result.state, result.result)
        record = job_records.get_job(db, job_id)
        assert record is not None and not record.get("deliveries"), record
    finally:
        celery.close()


def _states_of_a_released_job(pipeline: Pipeline, job_id: str, worker_name: str) -> list[str]:
    """Record and release a report job ``job_id`` as the dispatcher does, run it on a
    crashing_worker until it ends, and return the states Celery stored on the way."""
    db, settings = pipeline.db, pipeline.settings
    params = parse_report(dict(REPORT), settings).to_json()
    job_records.create_job(db, job_id, "acme", "alice", job_records.REPORT, params, "waiting")
    celery = make_celery(settings)
    try:
        claimed = job_dispatch.claim_next(
            db, "acme", 1, settings.job_ttl_s, pool=dispatch.pool(settings)
        )
        assert claimed is not None and claimed["_id"] == job_id
        dispatch.release(celery, db, claimed)
    finally:
        celery.close()
    seen: list[str] = []

    def ended() -> bool:
        meta = db[job_records.TASKMETA].find_one({"_id": job_id})
        if meta is not None and (not seen or seen[-1] != meta["status"]):
            seen.append(meta["status"])
        return bool(seen) and seen[-1] in job_records.ENDED

    proc = start_worker(pipeline, worker_name)
    try:
        wait_for(ended, 60, "the job ended", interval=0.02)
    finally:
        worker.stop(proc)
    return seen


def test_a_retried_start_check_keeps_the_job_queued_in_a_real_worker(
    pipeline: Pipeline, app: Flask
) -> None:
    """In a worker, a start check that meets a database error retries the delivery: the
    job shows RETRY, never FAILURE (the retry's id as a nested array in the result was
    refused by FerretDB, and the job showed FAILURE, its slots free to take, until the
    retry ran), and runs once with one delivery counted and one end."""
    job_id = FLAKY_START + str(uuid.uuid4())
    seen = _states_of_a_released_job(pipeline, job_id, "flaky")
    assert seen[-1] == "SUCCESS" and "FAILURE" not in seen and "RETRY" in seen, seen
    record = job_records.get_job(pipeline.db, job_id)
    assert record is not None
    assert (record.get("deliveries"), record.get("ends")) == (1, 1), record


def test_a_lost_database_connection_storing_started_waits_for_the_database(
    pipeline: Pipeline, app: Flask
) -> None:
    """Celery stores STARTED before a job runs. Stock, a lost connection there ended
    the delivery as an internal error, acked: the job was lost in a database outage
    (here it showed FAILURE, its failure being stored). The pool process retries the
    store (tasks.result_backend) and the job runs once."""
    job_id = FLAKY_STATE + str(uuid.uuid4())
    seen = _states_of_a_released_job(pipeline, job_id, "flaky-state")
    assert seen[-1] == "SUCCESS" and "FAILURE" not in seen, seen
    record = job_records.get_job(pipeline.db, job_id)
    assert record is not None
    assert (record.get("deliveries"), record.get("ends")) == (1, 1), record


@pytest.mark.settings(jobs_dispatch_interval_s=0.5)
def test_a_worker_killed_mid_job_releases_the_next_job_exactly_once(
    pipeline: Pipeline, app: Flask
) -> None:
    client, mallory = app.test_client(), token(pipeline, "mallory")
    db = pipeline.db
    first = start_worker(pipeline, "killed")
    try:
        slow = client.post("/api/reports", json={**REPORT, "device": SLOW_DEVICE}, headers=mallory)
        after = client.post("/api/reports", json=REPORT, headers=mallory)
        assert slow.status_code == after.status_code == 202
        slow_id, after_id = slow.get_json()["job"], after.get_json()["job"]
        wait_for(
            lambda: (job_records.get_job(db, slow_id) or {}).get("deliveries") == 1,
            30,
            "the slow job running",
            interval=0.1,
        )
    finally:
        worker.kill(first)  # the whole worker, mid-job (kill -9 of its process group)
    # The killed job still holds the tenant's turn: nothing released the next one.
    record = job_records.get_job(db, after_id)
    assert record is not None and record["dispatch"] == "waiting" and record["release"] == 0
    second = start_worker(pipeline, "second")
    try:
        assert wait_job(client, slow.get_json()["url"], mallory)["state"] == "SUCCESS"
        assert wait_job(client, after.get_json()["url"], mallory)["state"] == "SUCCESS"
        slow_record = job_records.get_job(db, slow_id)
        after_record = job_records.get_job(db, after_id)
        assert slow_record is not None and after_record is not None
        assert slow_record["deliveries"] == 2  # redelivered after the kill, ran again
        assert after_record["release"] == 1 and after_record["deliveries"] == 1
        assert (
            scrape_metric(second.metrics_port, "fairway_jobs_released_total", tenant="other") == 1
        )
        assert done_at(pipeline, slow_id) < done_at(pipeline, after_id)
        wait_for(
            lambda: job_records.unfinished(db, job_dispatch.DISPATCH, "other") == 0,
            10,
            "the dispatch slot freed",
            interval=0.2,
        )
        assert pipeline.depth("cpu") == 0
    finally:
        worker.stop(second)


def _waiting_job(pipeline: Pipeline, tenant: str) -> str:
    job_id = str(uuid.uuid4())
    params = parse_report(dict(REPORT), pipeline.settings).to_json()
    job_records.create_job(
        pipeline.db, job_id, tenant, "alice", job_records.REPORT, params, job_records.WAITING
    )
    return job_id


def _backdate(pipeline: Pipeline, job_id: str) -> None:
    past = datetime.now(UTC) - job_dispatch.RELEASE_GRACE - timedelta(seconds=5)
    db = pipeline.db
    db[job_records.SLOTS].update_many({"job": job_id}, {"$set": {"created": past}})
    db[job_records.SLOTS].update_many(
        {"job": job_id, "claimed_at": {"$exists": True}}, {"$set": {"claimed_at": past}}
    )


# Three processes: one for each job below that holds a process slot.
@pytest.mark.settings(jobs_dispatch_interval_s=0.5, jobs_cpu_processes=3)
def test_a_release_cut_short_by_a_crash_is_redone_exactly_once(
    pipeline: Pipeline, app: Flask
) -> None:
    db, settings = pipeline.db, pipeline.settings
    pool = dispatch.pool(settings)
    celery = make_celery(settings)
    try:
        # acme: claimed, then the dispatcher died before publishing.
        unsent = _waiting_job(pipeline, "acme")
        claimed = job_dispatch.claim_next(db, "acme", 1, settings.job_ttl_s, pool=pool)
        assert claimed is not None and claimed["_id"] == unsent and claimed["release"] == 1
        # other: claimed and published, then it died before marking it released.
        sent = _waiting_job(pipeline, "other")
        claimed = job_dispatch.claim_next(db, "other", 1, settings.job_ttl_s, pool=pool)
        assert claimed is not None and claimed["_id"] == sent
        dispatch.publish(celery, claimed)
        # third: its dispatch and process slots taken, then it died before claiming the job.
        unclaimed = _waiting_job(pipeline, "third")
        slot = job_records.take_slot(
            db, unclaimed, job_dispatch.DISPATCH, "third", 1, settings.job_ttl_s
        )
        assert slot is not None
        assert job_pool.take(db, unclaimed, pool, settings.job_ttl_s, job_dispatch.free_stale)
        assert db[job_records.SLOTS].count_documents({"scope": job_pool.POOL}) == 3
        # fourth: claimed (release 1), then it died before writing the record.
        orphan = _waiting_job(pipeline, "fourth")
        db[job_records.RELEASES].insert_one(
            {
                "_id": f"claim:{orphan}:1",
                "job": orphan,
                "n": 1,
                "kind": "release",
                "at": datetime.now(UTC),
            }
        )
        # Within the grace nothing is redone: a publish may still be under way.
        assert job_dispatch.stale_releases(db) == []
        assert dispatch.sweep(celery, db, settings) == {"slots": 0, "releases": 0}
        assert job_records.get_job(db, unclaimed)["dispatch"] == "waiting"  # type: ignore[index]
        assert job_records.get_job(db, orphan)["dispatch"] == "waiting"  # type: ignore[index]
        assert job_records.unfinished(db, job_dispatch.DISPATCH, "fourth") == 0
        for job_id in (unsent, sent, unclaimed):
            _backdate(pipeline, job_id)
        past = datetime.now(UTC) - job_dispatch.RELEASE_GRACE - timedelta(seconds=5)
        db[job_records.RELEASES].update_one({"_id": f"claim:{orphan}:1"}, {"$set": {"at": past}})
    finally:
        celery.close()
    proc = start_worker(pipeline, "sweeper")
    try:
        for job_id in (unsent, sent, unclaimed, orphan):
            wait_for(lambda j=job_id: _succeeded(pipeline, j), 60, f"{job_id} done", interval=0.2)
        records = {j: job_records.get_job(db, j) for j in (unsent, sent, unclaimed, orphan)}
        # Released again under a new number; the message of the first release (sent)
        # was ignored by the worker: each job ran once.
        assert records[unsent]["release"] == 2 and records[unsent]["deliveries"] == 1  # type: ignore[index]
        assert records[sent]["release"] == 2 and records[sent]["deliveries"] == 1  # type: ignore[index]
        assert records[unclaimed]["release"] == 1 and records[unclaimed]["deliveries"] == 1  # type: ignore[index]
        assert records[orphan]["release"] == 2 and records[orphan]["deliveries"] == 1  # type: ignore[index]
        port = proc.metrics_port
        assert scrape_metric(port, "fairway_jobs_dispatch_recovered_total", what="release") == 2
        assert scrape_metric(port, "fairway_jobs_dispatch_recovered_total", what="slot") == 1
        wait_for(lambda: pipeline.depth("cpu") == 0, 10, "the stale message acked", interval=0.2)
        assert db[job_records.SLOTS].count_documents({}) == 0
    finally:
        worker.stop(proc)


def _succeeded(pipeline: Pipeline, job_id: str) -> bool:
    meta = pipeline.db[job_records.TASKMETA].find_one({"_id": job_id})
    return meta is not None and meta["status"] == "SUCCESS"


@pytest.mark.settings(jobs_dispatch_per_tenant=2, jobs_cpu_processes=3)
def test_parallel_dispatchers_release_at_most_the_tenants_share(
    pipeline: Pipeline, app: Flask
) -> None:
    db, settings = pipeline.db, pipeline.settings
    pool = dispatch.pool(settings)
    for _ in range(6):
        _waiting_job(pipeline, "acme")
    claims: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        job = job_dispatch.claim_next(db, "acme", 2, settings.job_ttl_s, pool=pool)
        if job is not None:
            with lock:
                claims.append(job["_id"])

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(claims) == len(set(claims)) == 2, claims
    assert job_records.unfinished(db, job_dispatch.DISPATCH, "acme") == 2
    # One process each, none left behind by the dispatchers that lost a race.
    assert db[job_records.SLOTS].count_documents({"scope": job_pool.POOL}) == 2
    assert db[job_records.JOBS].count_documents(WAITING) == 4
    # The two oldest were claimed (the tenant's jobs go in submission order).
    oldest = [d["_id"] for d in db[job_records.JOBS].find({}).sort("created", 1).limit(2)]
    assert sorted(claims) == sorted(oldest)


# Five processes, one reserved: four outside the reserve, enough for idle_max's three.
@pytest.mark.settings(jobs_dispatch_per_tenant=1, jobs_dispatch_idle_max=3, jobs_cpu_processes=5)
def test_a_tenant_alone_uses_idle_capacity_beyond_its_share_until_another_waits(
    pipeline: Pipeline, app: Flask
) -> None:
    # No worker: released jobs stay in the cpu queue, so the slots stay held.
    client = app.test_client()
    alice, mallory = token(pipeline, "alice"), token(pipeline, "mallory")
    db = pipeline.db

    def submit(headers: dict[str, str]) -> str:
        answer = client.post("/api/reports", json=REPORT, headers=headers)
        assert answer.status_code == 202, answer.get_json()
        return str(answer.get_json()["job"])

    acme = [submit(alice) for _ in range(4)]
    # Alone: three released (idle_max), one beyond the share of 1 each; the fourth waits.
    states = [job_records.get_job(db, i)["dispatch"] for i in acme]  # type: ignore[index]
    assert states == ["releasing"] * 3 + ["waiting"], states
    assert job_records.unfinished(db, job_dispatch.DISPATCH, "acme") == 3
    shown = client.get(f"/api/jobs/{acme[3]}", headers=alice).get_json()
    assert (shown["state"], shown["ahead"]) == ("WAITING", 0)
    # Another tenant's first job takes its own share at once (acme has a job waiting,
    # so other does not borrow); its second waits its turn.
    other = [submit(mallory) for _ in range(2)]
    states = [job_records.get_job(db, i)["dispatch"] for i in other]  # type: ignore[index]
    assert states == ["releasing", "waiting"], states
    # While other waits, acme is held to its share: nothing more is released for it.
    assert job_dispatch.slots_for(db, "acme", 1, 3) == 1
    assert job_dispatch.claim_next(db, "acme", 1, pipeline.settings.job_ttl_s, 3) is None
    assert job_records.unfinished(db, job_dispatch.DISPATCH, "acme") == 3
    # Without idle_max (the default) a tenant alone never goes beyond its share.
    assert job_dispatch.slots_for(db, "third", 1, 0) == 1


# No reserve: a tenant alone may take every process (and a newcomer then waits a job).
@pytest.mark.settings(
    jobs_dispatch_per_tenant=1, jobs_dispatch_idle_max=2, jobs_reserved_processes=0
)
def test_a_tenant_alone_runs_on_every_idle_worker_process(pipeline: Pipeline, app: Flask) -> None:
    client = app.test_client()
    mallory = token(pipeline, "mallory")
    slow = {**REPORT, "device": SLOW_DEVICE}
    proc = start_worker(pipeline, "idle", concurrency=2)
    try:
        jobs = [client.post("/api/reports", json=slow, headers=mallory) for _ in range(2)]
        assert [j.status_code for j in jobs] == [202, 202]
        for j in jobs:
            assert wait_job(client, j.get_json()["url"], mallory)["state"] == "SUCCESS"
        first, second = sorted(done_at(pipeline, j.get_json()["job"]) for j in jobs)
        # Side by side on the two processes (one after the other: SLOW_S apart or more).
        assert (second - first).total_seconds() < SLOW_S * 0.6, (first, second)
        assert job_records.unfinished(pipeline.db, job_dispatch.DISPATCH, "other") == 0
    finally:
        worker.stop(proc)


def deferred(reason: str, tenant: str) -> float:
    """``fairway_jobs_deferred_total{reason,tenant}`` of this process (the web app's)."""
    labels = {"reason": reason, "tenant": tenant}
    return REGISTRY.get_sample_value("fairway_jobs_deferred_total", labels) or 0.0


# As compose runs it: two processes, a tenant alone may borrow both (idle_max), one kept
# for a tenant with none released (the default reserve).
@pytest.mark.settings(jobs_max_per_user=4, jobs_dispatch_idle_max=2, jobs_dispatch_interval_s=0.5)
def test_a_flooding_tenant_never_holds_the_process_another_tenants_job_needs(
    pipeline: Pipeline, app: Flask
) -> None:
    client = app.test_client()
    alice, mallory = token(pipeline, "alice"), token(pipeline, "mallory")
    slow = {**REPORT, "device": SLOW_DEVICE}
    db = pipeline.db
    before = deferred("pool_reserved", "other")
    proc = start_worker(pipeline, "reserve", concurrency=2)
    try:
        hostile = [client.post("/api/reports", json=slow, headers=mallory) for _ in range(4)]
        assert [h.status_code for h in hostile] == [202] * 4
        ids = [h.get_json()["job"] for h in hostile]
        # Alone, yet only one released: the second process is the reserve.
        states = [job_records.get_job(db, i)["dispatch"] for i in ids]  # type: ignore[index]
        assert states[0] in ("releasing", "started") and states[1:] == ["waiting"] * 3, states
        assert deferred("pool_reserved", "other") > before
        wait_for(
            lambda: (job_records.get_job(db, ids[0]) or {}).get("deliveries") == 1,
            30,
            "the first hostile job running",
            interval=0.1,
        )
        quiet = client.post("/api/reports", json=REPORT, headers=alice)
        assert quiet.status_code == 202
        assert wait_job(client, quiet.get_json()["url"], alice)["state"] == "SUCCESS"
        quiet_done = done_at(pipeline, quiet.get_json()["job"])
        for h in hostile:
            assert wait_job(client, h.get_json()["url"], mallory)["state"] == "SUCCESS"
        hostile_done = sorted(done_at(pipeline, i) for i in ids)
        # The quiet job ran on the reserved process beside the hostile job, not after it
        # (without the reserve both processes ran hostile jobs and it waited SLOW_S).
        assert quiet_done < hostile_done[0], (quiet_done, hostile_done)
        wait_for(
            lambda: db[job_records.SLOTS].count_documents({}) == 0,
            10,
            "every slot freed",
            interval=0.2,
        )
    finally:
        worker.stop(proc)


@pytest.mark.settings(jobs_max_per_user=4, jobs_dispatch_interval_s=0.5)
def test_a_freed_process_goes_to_the_tenant_waiting_for_one_not_back_to_the_flooder(
    pipeline: Pipeline, app: Flask
) -> None:
    client = app.test_client()
    alice, mallory = token(pipeline, "alice"), token(pipeline, "mallory")
    slow = {**REPORT, "device": SLOW_DEVICE}
    db = pipeline.db
    before = deferred("pool_full", "acme")
    proc = start_worker(pipeline, "turns", concurrency=2)
    try:
        hostile = [client.post("/api/reports", json=slow, headers=mallory) for _ in range(3)]
        assert [h.status_code for h in hostile] == [202] * 3
        ids = [h.get_json()["job"] for h in hostile]
        # A slow job of tenant third (a newcomer), released by the worker's sweep onto the
        # reserved process: both processes are then busy.
        third = str(uuid.uuid4())
        params = parse_report(dict(slow), pipeline.settings).to_json()
        job_records.create_job(
            db, third, "third", "trent", job_records.REPORT, params, job_records.WAITING
        )
        for job_id in (ids[0], third):
            wait_for(
                lambda j=job_id: (job_records.get_job(db, j) or {}).get("deliveries") == 1,
                30,
                f"{job_id} running",
                interval=0.1,
            )
        quiet = client.post("/api/reports", json=REPORT, headers=alice)
        assert quiet.status_code == 202
        quiet_id = quiet.get_json()["job"]
        record = job_records.get_job(db, quiet_id)
        assert record is not None and record["dispatch"] == "waiting", record
        assert deferred("pool_full", "acme") > before
        assert wait_job(client, quiet.get_json()["url"], alice)["state"] == "SUCCESS"
        for h in hostile:
            assert wait_job(client, h.get_json()["url"], mallory)["state"] == "SUCCESS"
        wait_for(lambda: _succeeded(pipeline, third), 60, "third's job done", interval=0.2)
        released_at = {
            j: job_records.get_job(db, j)["releasing_at"]  # type: ignore[index]
            for j in (quiet_id, *ids)
        }
        # The first process freed (the flooder's first job ending) went to acme, never
        # released before, not back to the flooder, though its waiting jobs are older.
        assert released_at[quiet_id] < released_at[ids[1]], released_at
        assert scrape_metric(proc.metrics_port, "fairway_jobs_released_total", tenant="acme") == 1
    finally:
        worker.stop(proc)


# Four processes, two kept for tenants with none running (set), a share of two.
@pytest.mark.settings(jobs_dispatch_per_tenant=2, jobs_cpu_processes=4, jobs_reserved_processes=2)
def test_turns_stop_where_no_process_is_left_for_the_next_tenant(
    pipeline: Pipeline, app: Flask
) -> None:
    db, settings = pipeline.db, pipeline.settings
    pool = dispatch.pool(settings)
    # other runs two jobs: both processes outside the reserve.
    for _ in range(3):
        _waiting_job(pipeline, "other")
    for _ in range(2):
        assert job_dispatch.claim_next(db, "other", 2, settings.job_ttl_s, pool=pool)
    for tenant in ("acme", "third"):  # newcomers, acme's jobs older
        for _ in range(2):
            _waiting_job(pipeline, tenant)
    before = {
        (why, tenant): deferred(why, tenant)
        for why in ("tenant_share", "pool_full", "pool_reserved")
        for tenant in ("acme", "third", "other")
    }
    celery = make_celery(settings)
    try:
        done = dispatch.fill_turns(celery, db, settings, job_dispatch.waiting(db))
    finally:
        celery.close()
    # acme takes a reserved process, then is refused the other (it runs one now); third,
    # with none running, still takes the last; then the pool is full and other, whose
    # turn is last, is not tried at all.
    assert done == {"acme": 1, "third": 1}, done
    grew = {key for key, n in before.items() if deferred(*key) > n}
    assert grew == {("pool_reserved", "acme"), ("pool_full", "third")}, grew
    assert db[job_records.SLOTS].count_documents({"scope": job_pool.POOL}) == 4
    # Each released job holds one of each; the refused left none behind.
    assert db[job_records.SLOTS].count_documents({"scope": job_dispatch.DISPATCH}) == 4
