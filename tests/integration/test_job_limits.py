"""Job limits against the real broker, FerretDB and Celery workers: quotas of unfinished
jobs per user and per tenant, the bound on a report's (metric, bucket) pairs, and the
delivery limit for a job that kills its worker (issue 10, item 5)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from prometheus_client import REGISTRY

from fairway.devtools import celery_workers as worker
from fairway.devtools.processes import free_port, wait_for
from fairway.storage import accounts, job_records, registry
from tests.harness import Pipeline
from tests.integration.crashing_worker import CRASH_DEVICE, FLAKY_DEVICE, FLAKY_TIMES
from tests.integration.test_jobs_api import token, wait_job
from tests.integration.test_tasks import START, insert_readings, running_worker, worker_metric
from web import create_app

PASSWORD = "correct horse battery"
T0 = START.timestamp()
REPORT = {"from": T0, "to": T0 + 3600, "bucket": 600}


@pytest.fixture
def app(pipeline: Pipeline) -> Iterator[Flask]:
    """The web app on the pipeline: tenants acme and other, their devices and users."""
    db = pipeline.db
    for tenant in ("acme", "other"):
        registry.create_tenant(db, tenant, 1, 1000)
        registry.register_device(db, tenant, f"{tenant}-1")
    registry.register_device(db, "acme", CRASH_DEVICE)
    registry.register_device(db, "acme", FLAKY_DEVICE)
    for user, role, tenant in (
        ("alice", "admin", "acme"),
        ("victor", "viewer", "acme"),
        ("walter", "viewer", "acme"),
        ("mallory", "admin", "other"),
    ):
        accounts.create_user(db, user, PASSWORD, role, tenant)
    times = [START + timedelta(seconds=10 * i) for i in range(360)]
    # Three metrics in six 600 s buckets: 18 (metric, bucket) pairs over the hour.
    values = [{"t": float(i % 7), "h": 50.0 + i % 3, "p": 1000.0 - i % 5} for i in range(360)]
    insert_readings(db, "acme", "acme-1", times, values)
    insert_readings(db, "acme", CRASH_DEVICE, times[:3], [{"t": 1.0}] * 3)
    insert_readings(db, "acme", FLAKY_DEVICE, times[:3], [{"t": 1.0}] * 3)
    insert_readings(db, "other", "other-1", times[:5], [{"t": 1000.0}] * 5)
    flask_app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    yield flask_app
    celery = flask_app.extensions.get("fairway_celery")
    if celery is not None:
        celery.close()
    flask_app.extensions["fairway_db"].client.close()


def refused(reason: str, tenant: str) -> float:
    """``fairway_jobs_refused_total{reason, tenant}`` of this process's web app."""
    labels = {"reason": reason, "tenant": tenant}
    return REGISTRY.get_sample_value("fairway_jobs_refused_total", labels) or 0.0


# -- quotas -----------------------------------------------------------------------------
@pytest.mark.settings(jobs_max_per_user=2, jobs_max_per_tenant=3)
def test_quotas_refuse_429_beyond_them_spare_others_and_free_on_completion(
    pipeline: Pipeline, app: Flask
) -> None:
    client = app.test_client()
    alice, victor = token(pipeline, "alice"), token(pipeline, "victor")
    walter, mallory = token(pipeline, "walter"), token(pipeline, "mallory")
    before_acme, before_other = refused("job_quota", "acme"), refused("job_quota", "other")
    jobs_before = pipeline.db[job_records.JOBS].count_documents({})

    # No worker yet: every accepted job stays queued, i.e. unfinished.
    accepted = [client.post("/api/reports", json=REPORT, headers=alice) for _ in range(2)]
    assert [a.status_code for a in accepted] == [202, 202]
    over = client.post("/api/exports", json={"from": T0, "to": T0 + 60}, headers=alice)
    assert over.status_code == 429, over.get_json()
    body = over.get_json()
    assert body["error"] == "job_quota" and "FAIRWAY_JOBS_MAX_PER_USER" in body["message"]

    # Another user of the tenant is not held by alice's quota, up to the tenant's.
    assert client.post("/api/reports", json=REPORT, headers=victor).status_code == 202
    tenant_full = client.post("/api/reports", json=REPORT, headers=walter)
    assert tenant_full.status_code == 429
    assert "FAIRWAY_JOBS_MAX_PER_TENANT" in tenant_full.get_json()["message"]
    # Another tenant is not held by acme's.
    assert client.post("/api/reports", json=REPORT, headers=mallory).status_code == 202

    assert refused("job_quota", "acme") - before_acme == 2
    assert refused("job_quota", "other") - before_other == 0
    # Refused jobs are not recorded, not queued, and hold no slot. Of the accepted, one
    # of each tenant is in the queue and acme's two others wait their turn (fair dispatch).
    assert pipeline.db[job_records.JOBS].count_documents({}) == jobs_before + 4
    assert pipeline.depth("cpu") == 2
    assert pipeline.db[job_records.JOBS].count_documents({"dispatch": "waiting"}) == 2
    db = pipeline.db
    assert job_records.unfinished(db, job_records.USER, "alice") == 2
    assert job_records.unfinished(db, job_records.USER, "walter") == 0
    assert job_records.unfinished(db, job_records.TENANT, "acme") == 3

    with running_worker(pipeline):
        for answer in accepted:
            assert wait_job(client, answer.get_json()["url"], alice)["state"] == "SUCCESS"
        wait_for(
            lambda: job_records.unfinished(db, job_records.USER, "alice") == 0,
            60,
            "alice's slots freed",
            interval=0.2,
        )
        # Freed by completion: alice may submit again, and so may walter.
        again = client.post("/api/reports", json=REPORT, headers=alice)
        assert again.status_code == 202, again.get_json()
        assert client.post("/api/reports", json=REPORT, headers=walter).status_code == 202
        assert wait_job(client, again.get_json()["url"], alice)["state"] == "SUCCESS"


@pytest.mark.settings(jobs_max_per_user=3, jobs_max_per_tenant=50)
def test_parallel_submissions_do_not_overshoot_the_quota(pipeline: Pipeline, app: Flask) -> None:
    alice = token(pipeline, "alice")
    answers: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def submit() -> None:
        client = app.test_client()
        start.wait()
        code = client.post("/api/reports", json=REPORT, headers=alice).status_code
        with lock:
            answers.append(code)

    threads = [threading.Thread(target=submit) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(answers) == [202] * 3 + [429] * 9, answers  # slots are unique inserts
    assert pipeline.depth("cpu") == 1  # one released (FAIRWAY_JOBS_DISPATCH_PER_TENANT)
    assert job_records.unfinished(pipeline.db, job_records.USER, "alice") == 3


def test_a_slot_whose_release_was_lost_is_taken_back(pipeline: Pipeline) -> None:
    db = pipeline.db
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for job_id in ids[:2]:
        job_records.reserve(db, job_id, "acme", "alice", 2, 10, 3600)
        job_records.create_job(db, job_id, "acme", "alice", job_records.REPORT, {})
    with pytest.raises(job_records.QuotaExceeded) as full:
        job_records.reserve(db, ids[2], "acme", "alice", 2, 10, 3600)
    assert full.value.scope == job_records.USER
    # The first job ended (its result is stored) but its worker never released the slots.
    db[job_records.TASKMETA].insert_one({"_id": ids[0], "status": "SUCCESS", "result": "{}"})
    job_records.reserve(db, ids[2], "acme", "alice", 2, 10, 3600)
    job_records.create_job(db, ids[2], "acme", "alice", job_records.REPORT, {})
    assert {d["job"] for d in db[job_records.SLOTS].find({"scope": "user"})} == set(ids[1:])
    # A record older than the job TTL has ended too (retention drops it), whatever its state.
    db[job_records.JOBS].update_one(
        {"_id": ids[1]}, {"$set": {"created": datetime.now(UTC) - timedelta(hours=2)}}
    )
    job_records.reserve(db, "fourth", "acme", "alice", 2, 10, 3600)
    assert job_records.unfinished(db, job_records.TENANT, "acme") == 2
    # A slot without a record (the web app died before recording it) goes once it is
    # older than the grace; a younger one is a submission under way and stays.
    with pytest.raises(job_records.QuotaExceeded):
        job_records.reserve(db, "fifth", "acme", "alice", 2, 10, 3600)
    db[job_records.SLOTS].update_many(
        {"job": "fourth"}, {"$set": {"created": datetime.now(UTC) - timedelta(minutes=5)}}
    )
    job_records.reserve(db, "fifth", "acme", "alice", 2, 10, 3600)
    assert job_records.unfinished(db, job_records.USER, "alice") == 2
    # Retention's delete of expired records frees their slots too.
    assert job_records.delete_jobs(db, [ids[2]]) == 1
    assert job_records.unfinished(db, job_records.TENANT, "acme") == 1


# -- the bound on (metric, bucket) pairs --------------------------------------------------
@pytest.mark.settings(report_max_series=10)
def test_a_report_beyond_its_series_bound_fails_with_a_reason(
    pipeline: Pipeline, app: Flask
) -> None:
    client, alice = app.test_client(), token(pipeline, "alice")
    # Up front, from the parameters: 12 buckets of one metric are already 12 pairs.
    early = client.post("/api/reports", json={**REPORT, "bucket": 300}, headers=alice)
    assert early.status_code == 400
    assert "FAIRWAY_REPORT_MAX_SERIES" in early.get_json()["message"]
    assert "12 buckets" in early.get_json()["message"]

    with running_worker(pipeline) as proc:
        # While folding: 6 buckets pass up front, but three metrics make 18 pairs.
        answer = client.post("/api/reports", json={**REPORT, "device": "acme-1"}, headers=alice)
        assert answer.status_code == 202
        failed = wait_job(client, answer.get_json()["url"], alice)
        assert failed["state"] == "FAILURE", failed
        assert "more than 10 (metric, bucket) pairs" in failed["error"]
        assert "FAIRWAY_REPORT_MAX_SERIES" in failed["error"]
        assert failed["reason"] == "job_too_large"
        # The worker carries on: one metric in six buckets fits.
        ok = client.post(
            "/api/reports", json={**REPORT, "device": CRASH_DEVICE}, headers=alice
        ).get_json()
        done = wait_job(client, ok["url"], alice)
        assert done["state"] == "SUCCESS" and done["result"]["readings"] == 3
        assert proc.poll() is None
    assert job_records.unfinished(pipeline.db, job_records.USER, "alice") == 0


# -- the delivery limit ------------------------------------------------------------------
@pytest.mark.settings(jobs_max_attempts=2)
def test_retries_after_database_errors_are_not_lost_deliveries(
    pipeline: Pipeline, app: Flask
) -> None:
    """A job whose report meets a lost database connection three times is retried and
    succeeds: each retry ended its delivery (they counted as deliveries that took their
    worker down, and the job failed worker_lost on the limit of two)."""
    client, alice = app.test_client(), token(pipeline, "alice")
    proc = worker.start(
        pipeline.settings, pipeline.workdir / "flaky.log", app="tests.integration.crashing_worker"
    )
    try:
        job = client.post("/api/reports", json={**REPORT, "device": FLAKY_DEVICE}, headers=alice)
        assert job.status_code == 202
        done = wait_job(client, job.get_json()["url"], alice)
    finally:
        worker.stop(proc)
    assert done["state"] == "SUCCESS", done
    record = job_records.get_job(pipeline.db, job.get_json()["job"])
    assert record is not None and "failure" not in record, record
    runs = FLAKY_TIMES + 1
    assert (record["deliveries"], record["ends"]) == (runs, runs), record


@pytest.mark.settings(jobs_max_attempts=2)
def test_a_job_that_kills_its_worker_fails_after_the_delivery_limit(
    pipeline: Pipeline, app: Flask
) -> None:
    client, alice, victor = app.test_client(), token(pipeline, "alice"), token(pipeline, "victor")
    settings = type(pipeline.settings).from_env(
        pipeline.settings.environ(), metrics_port=free_port()
    )
    proc = worker.start(
        settings, pipeline.workdir / "crashing.log", app="tests.integration.crashing_worker"
    )
    try:
        deadly = client.post("/api/reports", json={**REPORT, "device": CRASH_DEVICE}, headers=alice)
        assert deadly.status_code == 202
        fine = client.post("/api/reports", json={**REPORT, "device": "acme-1"}, headers=victor)
        assert fine.status_code == 202

        failed = wait_job(client, deadly.get_json()["url"], alice)
        assert failed["state"] == "FAILURE", failed
        assert failed["reason"] == job_records.WORKER_LOST
        assert "died 2 times" in failed["error"] and "FAIRWAY_JOBS_MAX_ATTEMPTS" in failed["error"]
        record = job_records.get_job(pipeline.db, deadly.get_json()["job"])
        assert record is not None
        assert record["deliveries"] == 3 and record["failure"]["reason"] == "worker_lost"

        # The pool kept serving: the other job and a new one succeed on the same worker.
        assert wait_job(client, fine.get_json()["url"], victor)["state"] == "SUCCESS"
        later = client.post("/api/reports", json={**REPORT, "device": "acme-1"}, headers=alice)
        assert wait_job(client, later.get_json()["url"], alice)["state"] == "SUCCESS"
        assert proc.poll() is None
        proc.metrics_port = settings.metrics_port  # type: ignore[attr-defined]
        assert worker_metric(proc, "fairway_jobs_worker_lost_total", task="fairway.report") == 2
        # The failed job freed its quota slots like any other.
        db = pipeline.db
        wait_for(
            lambda: job_records.unfinished(db, job_records.TENANT, "acme") == 0,
            30,
            "slots freed",
            interval=0.2,
        )
    finally:
        worker.stop(proc)
