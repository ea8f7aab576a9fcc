"""Celery jobs on a real worker process, the real broker (the test's vhost) and FerretDB.

The worker runs as ``celery -A tasks worker --pool prefork -c 1`` with the pipeline's
settings in its environment; readings are inserted directly into ``telemetry``.
"""

from __future__ import annotations

import csv
import io
import math
import random
import statistics
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from celery import Celery
from celery.exceptions import TimeLimitExceeded

from fairway.devtools import celery_workers as worker
from fairway.devtools.processes import free_port, wait_for
from fairway.domain.job_params import JobFailed
from fairway.kernel import topology
from fairway.kernel.contract import hour_key, reading_id, split_reading_id
from fairway.storage import device_state, job_records, rollups
from fairway.storage.mongo import ROLLUP_PENDING, TELEMETRY, TENANTS
from fairway.storage.telemetry import floor_hour
from tasks import export, retention, rollup
from tasks.base import EXPORT_TASK, REPORT_TASK
from tasks.celery_app import make_celery
from tests.harness import Pipeline, reading_query, scrape_metric

START = datetime(2026, 1, 1, tzinfo=UTC)


# -- helpers (also used by test_jobs_api) ------------------------------------------------
def insert_readings(
    db: Any,
    tenant: str,
    device: str,
    times: list[datetime],
    values: list[dict[str, Any]],
    stream: str = "s",
    prefix: str = "m",
) -> None:
    """Store readings directly, as the scheduler would (``contract.to_document`` shape),
    with what its sink maintains: a ``rollup_pending`` mark per device-hour and
    ``device_state``."""
    docs = [
        {
            "_id": reading_id(tenant, device, f"{prefix}{i}"),
            "hk": hour_key(tenant, device, ts),
            "stream": stream,
            "ts": ts,
            "received": ts,
            "values": v,
        }
        for i, (ts, v) in enumerate(zip(times, values, strict=True))
    ]
    with_old_fields(docs)
    for i in range(0, len(docs), 5000):
        db[TELEMETRY].insert_many(docs[i : i + 5000], ordered=False)
    rollups.mark_pending(db, {(tenant, device, floor_hour(ts)) for ts in times})
    if docs:
        device_state.apply(db, device_state.fold(docs))


def with_old_fields(docs: list[dict[str, Any]]) -> None:
    """Every third reading as stored before lean documents (with ``tenant``, ``device``
    and ``msg_id`` besides ``_id``): old documents stay, and every reader takes both."""
    for doc in docs[::3]:
        tenant, device, message_id = split_reading_id(doc["_id"])
        doc.update(tenant=tenant, device=device, msg_id=message_id)


def store_readings(
    db: Any, tenant: str, device: str, times: list[datetime], values: list[dict[str, Any]]
) -> None:
    """Like :func:`insert_readings`, with what the sink also maintains and retention reads:
    the hour key ``hk`` and ``device_state``."""
    docs = [
        {
            "_id": reading_id(tenant, device, f"m{i}"),
            "hk": hour_key(tenant, device, ts),
            "stream": "s",
            "ts": ts,
            "received": ts,
            "values": v,
        }
        for i, (ts, v) in enumerate(zip(times, values, strict=True))
    ]
    with_old_fields(docs)
    for i in range(0, len(docs), 5000):
        db[TELEMETRY].insert_many(docs[i : i + 5000], ordered=False)
    device_state.apply(db, device_state.fold(docs))


def bulk_readings(db: Any, tenant: str, device: str, count: int) -> None:
    """``count`` readings, one a second from START, two numeric values each."""
    times = [START + timedelta(seconds=i) for i in range(count)]
    insert_readings(db, tenant, device, times, [{"a": i, "b": i * 0.5} for i in range(count)])


def state(app: Celery, job_id: str) -> tuple[str, Any]:
    """The job's state and info as stored by the worker."""
    result = app.AsyncResult(job_id)
    return result.state, result.info


def wait_done(app: Celery, job_id: str, timeout: float = 120.0) -> tuple[str, Any]:
    """Wait for SUCCESS or FAILURE."""
    seen: list[tuple[str, Any]] = []

    def done() -> tuple[str, Any] | None:
        s = state(app, job_id)
        seen.append(s)
        return s if s[0] in ("SUCCESS", "FAILURE") else None

    try:
        return wait_for(done, timeout, f"job {job_id} to finish", interval=0.3)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last state {seen[-1] if seen else None!r}") from None


@contextmanager
def job_events(p: Pipeline) -> Iterator[Any]:
    """A queue bound to ``events`` with ``job.#``; yields a function draining it."""
    with p.channel() as channel:
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, topology.EVENTS, "job.#")
        seen: list[tuple[str, dict[str, Any]]] = []

        def drain() -> list[tuple[str, dict[str, Any]]]:
            while True:
                method, props, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return seen
                assert props.content_type == "application/json"
                seen.append((method.routing_key, orjson.loads(body)))

        yield drain


@contextmanager
def running_worker(p: Pipeline, name: str = "worker", **overrides: Any) -> Iterator[Any]:
    """A Celery worker on the pipeline's vhost and database, with a metrics port."""
    settings = type(p.settings).from_env(
        p.settings.environ(), metrics_port=free_port(), **overrides
    )
    proc = worker.start(settings, p.workdir / f"{name}.log")
    proc.metrics_port = settings.metrics_port  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        worker.stop(proc)


def worker_metric(proc: subprocess.Popen[bytes], name: str, **labels: str) -> float:
    """A sample from the worker main process's Prometheus endpoint (0 if absent)."""
    return scrape_metric(proc.metrics_port, name, **labels)  # type: ignore[attr-defined]


def send(app: Celery, task: str, tenant: str, user: str, params: dict[str, Any]) -> str:
    """Send a job's task straight to the broker (the API also records the job)."""
    result = app.send_task(task, kwargs={"tenant": tenant, "user": user, "params": params})
    return result.id


# -- reports --------------------------------------------------------------------------
def test_report_figures_equal_an_independent_computation(pipeline: Pipeline) -> None:
    rng = random.Random(11)
    db = pipeline.db
    truth: dict[tuple[str, int], list[float]] = defaultdict(list)
    device_truth: dict[int, list[float]] = defaultdict(list)
    for d in range(3):
        times = [START + timedelta(seconds=rng.uniform(-600, 7800)) for _ in range(400)]
        values = [
            {"temp": rng.gauss(20 + d, 2) if rng.random() > 0.02 else 80.0, "door": False}
            for _ in times
        ]
        insert_readings(db, "acme", f"dev{d}", times, values)
        for ts, v in zip(times, values, strict=True):
            if START <= ts < START + timedelta(hours=2):
                index = int((ts - START).total_seconds() // 1800)
                truth["temp", index].append(v["temp"])
                if d == 1:
                    device_truth[index].append(v["temp"])
    # Another tenant's readings in the same range must not count.
    insert_readings(db, "other", "dev9", [START + timedelta(minutes=5)], [{"temp": 1e6}])

    app = make_celery(pipeline.settings)
    params = {"device": None, "start": START.timestamp(), "end": START.timestamp() + 7200,
              "bucket_s": 1800, "z": 2.0}  # fmt: skip
    with job_events(pipeline) as events, running_worker(pipeline):
        tenant_job = send(app, REPORT_TASK, "acme", "alice", params)
        device_job = send(app, REPORT_TASK, "acme", "bob", {**params, "device": "dev1"})
        tenant_state, tenant_report = wait_done(app, tenant_job)
        device_state, device_report = wait_done(app, device_job)
        got = wait_for(lambda: len(events()) >= 2 and events(), 30, "two job events")

    assert (tenant_state, device_state) == ("SUCCESS", "SUCCESS")
    assert tenant_report["readings"] == sum(len(v) for v in truth.values())
    assert tenant_report["devices"] == 3
    assert set(tenant_report["metrics"]) == {"temp"}
    for report, expected in ((tenant_report, {i: truth["temp", i] for i in range(4)}),
                             (device_report, device_truth)):  # fmt: skip
        buckets = report["metrics"]["temp"]["buckets"]
        assert [b["start"] for b in buckets] == [
            (START + timedelta(minutes=30 * i)).isoformat().replace("+00:00", "Z") for i in range(4)
        ]
        for i, bucket in enumerate(buckets):
            values = expected[i]
            mean, std = statistics.fmean(values), statistics.pstdev(values)
            assert bucket["count"] == len(values)
            assert bucket["min"] == min(values) and bucket["max"] == max(values)
            assert math.isclose(bucket["mean"], mean, rel_tol=1e-12)
            assert math.isclose(bucket["std"], std, rel_tol=1e-9)
            assert math.isclose(bucket["p50"], statistics.median(values), rel_tol=1e-12)
            p95 = statistics.quantiles(values, n=100, method="inclusive")[94]
            assert math.isclose(bucket["p95"], p95, rel_tol=1e-12)
            assert bucket["outliers"] == sum(1 for v in values if abs(v - mean) / std > 2.0)
            assert all(o["value"] == 80.0 for o in bucket["top_outliers"][:1])

    by_job = {body["job"]: (key, body) for key, body in got}
    key, body = by_job[tenant_job]
    assert key == "job.acme.alice"
    assert body == {
        "kind": "job", "tenant": "acme", "user": "alice", "job": tenant_job, "task": "report",
        "state": "SUCCESS", "url": f"/api/jobs/{tenant_job}", "at": body["at"],
    }  # fmt: skip
    assert by_job[device_job][0] == "job.acme.bob"


def test_progress_is_visible_while_a_report_runs(pipeline: Pipeline) -> None:
    bulk_readings(pipeline.db, "acme", "dev1", 30_000)
    rollup.roll_closed_hours(pipeline.db, grace_s=0)  # the total comes from the rollups' n
    app = make_celery(pipeline.settings)
    params = {"device": "dev1", "start": START.timestamp(), "end": START.timestamp() + 30_000,
              "bucket_s": 3600, "z": 3.0}  # fmt: skip
    seen: list[dict[str, int]] = []

    def progress() -> bool:
        s, info = state(app, job)
        if s == "PROGRESS":
            seen.append(info)
        return s == "SUCCESS"

    with running_worker(pipeline):
        job = send(app, REPORT_TASK, "acme", "alice", params)
        wait_for(progress, 120, "report to finish", interval=0.1)
    assert any(0 < p["done"] < 30_000 for p in seen), seen
    assert all(p["total"] == 30_000 for p in seen)
    assert state(app, job)[1]["readings"] == 30_000


# -- crash and time limits ------------------------------------------------------------
def read_export(db: Any, job_id: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(export.open_file(db, job_id).read().decode())))


@pytest.mark.faults
def test_worker_killed_mid_export_redelivers_and_completes_once(pipeline: Pipeline) -> None:
    n = 40_000
    bulk_readings(pipeline.db, "acme", "dev1", n)
    app = make_celery(pipeline.settings)
    params = {"device": "dev1", "start": START.timestamp(), "end": START.timestamp() + n}
    with job_events(pipeline) as events:
        with running_worker(pipeline, "worker-1") as first:
            job = send(app, EXPORT_TASK, "acme", "alice", params)
            wait_for(
                lambda: (s := state(app, job))[0] == "PROGRESS" and s[1]["done"] > 0,
                120,
                "export under way",
                interval=0.05,
            )
            worker.kill(first)  # SIGKILL main and pool process: the job is unacked
        assert state(app, job)[0] == "PROGRESS"
        assert export.file_info(pipeline.db, job) is None  # not complete at the crash

        with running_worker(pipeline, "worker-2") as second:
            final, result = wait_done(app, job, 180)
            assert worker_metric(second, "fairway_jobs_redelivered_total", task=EXPORT_TASK) == 1
            got = wait_for(lambda: events(), 30, "job event")

    assert final == "SUCCESS", result
    db = pipeline.db
    assert db[f"{export.BUCKET}.files"].count_documents({}) == 1
    info = export.file_info(db, job)
    assert info is not None and info["length"] == result["bytes"]
    assert db[f"{export.BUCKET}.chunks"].count_documents({"files_id": job}) == math.ceil(
        info["length"] / info["chunkSize"]
    )
    rows = read_export(db, job)
    assert rows[0] == ["ts", "device", "stream", "metric", "value"]
    body = rows[1:]
    assert len(body) == result["rows"] == 2 * n and result["readings"] == n
    assert len({(r[0], r[3]) for r in body}) == 2 * n  # every value once
    assert {r[0] for r in body} == {
        (START + timedelta(seconds=i)).isoformat().replace("+00:00", "Z") for i in range(n)
    }
    assert [(key, b["state"]) for key, b in got] == [("job.acme.alice", "SUCCESS")]


@pytest.mark.settings(report_soft_time_limit_s=1.0, report_time_limit_s=30.0)
def test_report_past_its_soft_time_limit_fails_and_says_so(pipeline: Pipeline) -> None:
    bulk_readings(pipeline.db, "acme", "dev1", 40_000)
    app = make_celery(pipeline.settings)
    params = {"device": None, "start": START.timestamp(), "end": START.timestamp() + 40_000,
              "bucket_s": 3600, "z": 3.0}  # fmt: skip
    with job_events(pipeline) as events, running_worker(pipeline) as proc:
        job = send(app, REPORT_TASK, "acme", "alice", params)
        final, exc = wait_done(app, job)
        got = wait_for(lambda: events(), 30, "job event")
        # The worker carries on: a small report still runs (the big one goes first, with
        # its marks: the small one plans and reads only its own hour).
        pipeline.db[TELEMETRY].drop()
        pipeline.db[ROLLUP_PENDING].drop()
        bulk_readings(pipeline.db, "acme", "dev1", 10)
        small = send(app, REPORT_TASK, "acme", "alice", params)
        assert wait_done(app, small)[0] == "SUCCESS"
        assert worker_metric(proc, "fairway_jobs_started_total", task=REPORT_TASK) == 2
        for outcome in ("success", "failure"):  # Celery's own on_success hid these
            assert (
                worker_metric(
                    proc, "fairway_jobs_finished_total", task=REPORT_TASK, outcome=outcome
                )
                == 1
            ), outcome
    assert final == "FAILURE"
    assert isinstance(exc, JobFailed)
    assert "time limit of 1 s" in str(exc)
    assert exc.reason == "time_limit"  # the code survives Celery's result backend
    assert [(key, b["state"]) for key, b in got] == [("job.acme.alice", "FAILURE")]


@pytest.mark.settings(report_soft_time_limit_s=0.0, report_time_limit_s=1.0)
def test_report_past_its_hard_time_limit_is_killed_not_redelivered(pipeline: Pipeline) -> None:
    bulk_readings(pipeline.db, "acme", "dev1", 40_000)
    app = make_celery(pipeline.settings)
    params = {"device": None, "start": START.timestamp(), "end": START.timestamp() + 40_000,
              "bucket_s": 3600, "z": 3.0}  # fmt: skip
    with job_events(pipeline) as events, running_worker(pipeline) as proc:
        job = send(app, REPORT_TASK, "acme", "alice", params)
        final, exc = wait_done(app, job)
        got = wait_for(lambda: events(), 30, "job event")
        pipeline.db[TELEMETRY].drop()
        pipeline.db[ROLLUP_PENDING].drop()  # the small report reads only its own hour
        bulk_readings(pipeline.db, "acme", "dev1", 10)
        small = send(app, REPORT_TASK, "acme", "alice", params)
        assert wait_done(app, small)[0] == "SUCCESS"
        # Acked, not requeued: the only other job this worker took is the small one.
        assert worker_metric(proc, "fairway_jobs_started_total", task=REPORT_TASK) == 2
        assert worker_metric(proc, "fairway_jobs_redelivered_total", task=REPORT_TASK) == 0
        assert (
            worker_metric(
                proc, "fairway_jobs_finished_total", task=REPORT_TASK, outcome="time_limit"
            )
            == 1
        )
    assert final == "FAILURE"
    assert isinstance(exc, TimeLimitExceeded)
    # The main process (the pool process is gone) tells the user.
    assert [(key, b["state"]) for key, b in got] == [("job.acme.alice", "FAILURE")]


# -- retention ------------------------------------------------------------------------
@pytest.mark.settings(default_retention_days=3, retention_interval_s=1.0, job_ttl_s=86400.0)
def test_beat_runs_retention_per_tenant_plan(pipeline: Pipeline) -> None:
    db = pipeline.db
    now = datetime.now(UTC)
    ages_days = [0.5, 2, 5, 20]
    plans = {"short": 1, "default": None, "long": 10}
    for tenant, days in plans.items():
        db[TENANTS].insert_one({"_id": tenant, "weight": 1, "max_backlog": 10,
                                **({"retention_days": days} if days else {})})  # fmt: skip
        times = [now - timedelta(days=a) for a in ages_days]
        store_readings(db, tenant, f"{tenant}-dev", times, [{"v": a} for a in ages_days])
    # A tenant-less reading (tenant deleted) is not this task's business.
    insert_readings(db, "gone", "x", [now - timedelta(days=100)], [{"v": 1}])
    # An expired job and its export file go; a recent one stays.
    old = job_records.create_job(db, "old-job", "long", "alice", "export", {})
    db[job_records.JOBS].update_one(
        {"_id": "old-job"}, {"$set": {"created": now - timedelta(days=2)}}
    )
    job_records.create_job(db, "new-job", "long", "alice", "export", {})
    for job_id in (old["_id"], "new-job"):
        with export.bucket(db).open_upload_stream_with_id(job_id, f"{job_id}.csv") as f:
            f.write(b"ts,device\n")

    def remaining(tenant: str) -> list[float]:
        return sorted(d["values"]["v"] for d in db[TELEMETRY].find(reading_query(tenant)))

    expected = {"short": [0.5], "default": [0.5, 2], "long": [0.5, 2, 5]}
    with running_worker(pipeline):
        beat = worker.start_beat(
            pipeline.settings, pipeline.workdir / "beat.log", pipeline.workdir / "schedule"
        )
        try:
            wait_for(
                lambda: (
                    all(remaining(t) == v for t, v in expected.items())
                    and job_records.get_job(db, "old-job") is None
                ),
                90,
                "retention to run from the beat schedule",
                interval=0.5,
            )
        finally:
            worker.stop(beat)
    assert remaining("gone") == [1]
    assert job_records.get_job(db, "new-job") is not None
    assert export.file_info(db, "old-job") is None
    assert db[f"{export.BUCKET}.chunks"].count_documents({"files_id": "old-job"}) == 0
    assert export.file_info(db, "new-job") is not None


def test_retention_deletes_more_than_one_database_statement_may(pipeline: Pipeline) -> None:
    # FerretDB 1.24 (SQLite) refuses a delete matching more than 32,766 documents: here
    # one device-hour holds 40,000 readings (one delete by hk, split on SQLite).
    db = pipeline.db
    n = 40_000
    times = [START + timedelta(milliseconds=90 * i) for i in range(n)]  # within one hour
    store_readings(db, "acme", "old", times, [{"v": i} for i in range(n)])
    now = datetime.now(UTC)
    recent = [now - timedelta(hours=h) for h in (1, 2, 3)]
    store_readings(db, "acme", "new", recent, [{"v": 1}] * 3)
    store_readings(db, "other", "old2", [START], [{"v": 1}])
    db[TENANTS].insert_many([{"_id": "acme"}, {"_id": "other", "retention_days": 3650}])
    result = retention.apply_retention(db, 30, 86400.0, now, lambda done, total: None, 1000)
    assert result["documents_deleted"] == {"acme": n, "other": 0}
    assert db[TELEMETRY].count_documents(reading_query("acme")) == 3
    assert db[TELEMETRY].count_documents(reading_query("other")) == 1
