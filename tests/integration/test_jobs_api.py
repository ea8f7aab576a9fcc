"""The jobs API (Flask test client) with a real Celery worker, broker and FerretDB behind."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fairway.devtools.processes import wait_for
from fairway.storage import accounts, job_records, registry
from tests.harness import Pipeline
from tests.integration.test_tasks import START, insert_readings, running_worker
from web import create_app

PASSWORD = "correct horse battery"
T0 = START.timestamp()


@pytest.fixture
def app(pipeline: Pipeline) -> Iterator[Flask]:
    """The web app on the pipeline, with two tenants, their devices and users."""
    db = pipeline.db
    for tenant in ("acme", "other"):
        registry.create_tenant(db, tenant, 1, 1000)
        registry.register_device(db, tenant, f"{tenant}-1")
    for user, role, tenant in (
        ("alice", "admin", "acme"),
        ("victor", "viewer", "acme"),
        ("mallory", "admin", "other"),
        ("ops", "operator", None),
    ):
        accounts.create_user(db, user, PASSWORD, role, tenant)
    times = [START + timedelta(seconds=10 * i) for i in range(360)]
    insert_readings(
        db, "acme", "acme-1", times, [{"t": float(i % 7), "ok": True} for i in range(360)]
    )
    insert_readings(db, "other", "other-1", times[:5], [{"t": 1000.0}] * 5)
    flask_app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    assert "jobs" in flask_app.blueprints, "web.create_app must register web.jobs.bp"
    yield flask_app
    celery = flask_app.extensions.get("fairway_celery")
    if celery is not None:
        celery.close()
    flask_app.extensions["fairway_db"].client.close()


def token(pipeline: Pipeline, user: str) -> dict[str, str]:
    """Authorization header with a fresh API token of ``user``."""
    return {"Authorization": "Bearer " + accounts.create_api_token(pipeline.db, user, 3600)}


def wait_job(client: FlaskClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """Poll the job URL until it has finished."""

    def finished() -> dict[str, Any] | None:
        body = client.get(url, headers=headers).get_json()
        return body if body["state"] in ("SUCCESS", "FAILURE") else None

    return wait_for(finished, 180, f"{url} to finish", interval=0.3)


REPORT = {"from": "2026-01-01T00:00:00Z", "to": T0 + 3600, "bucket": 600}


def test_report_job_is_visible_to_its_tenant_only(pipeline: Pipeline, app: Flask) -> None:
    client = app.test_client()
    alice, victor = token(pipeline, "alice"), token(pipeline, "victor")
    mallory, root = token(pipeline, "mallory"), token(pipeline, "ops")
    with running_worker(pipeline):
        answer = client.post("/api/reports", json={**REPORT, "device": "acme-1"}, headers=alice)
        assert answer.status_code == 202, answer.get_json()
        job = answer.get_json()
        assert answer.headers["Location"] == job["url"] == f"/api/jobs/{job['job']}"
        done = wait_job(client, job["url"], alice)

        assert done["state"] == "SUCCESS", done
        assert (done["kind"], done["tenant"], done["user"]) == ("report", "acme", "alice")
        assert done["params"]["from"] == "2026-01-01T00:00:00Z"
        report = done["result"]
        assert report["readings"] == 360 and report["device"] == "acme-1"
        buckets = report["metrics"]["t"]["buckets"]
        assert [b["count"] for b in buckets] == [60] * 6
        assert buckets[0]["max"] == 6.0 and buckets[0]["min"] == 0.0
        assert client.get(job["url"], headers=victor).status_code == 200  # same tenant
        assert client.get(job["url"], headers=root).status_code == 200  # operator
        hidden = client.get(job["url"], headers=mallory)
        assert hidden.status_code == 404 and hidden.get_json()["error"] == "not_found"
        listed = client.get("/api/jobs", headers=mallory).get_json()["jobs"]
        assert listed == []
        assert [j["job"] for j in client.get("/api/jobs", headers=victor).get_json()["jobs"]] == [
            job["job"]
        ]

        # A whole-tenant report, asked for by an operator for that tenant.
        answer = client.post("/api/reports", json={**REPORT, "tenant": "acme"}, headers=root)
        assert answer.status_code == 202
        whole = wait_job(client, answer.get_json()["url"], alice)
        assert whole["state"] == "SUCCESS" and whole["result"]["readings"] == 360
        assert whole["tenant"] == "acme" and whole["user"] == "ops"

        # The same figures without percentiles, from rollups (none yet: folded from raw).
        answer = client.post("/api/reports", json={**REPORT, "detail": "summary"}, headers=alice)
        assert answer.status_code == 202
        summary = wait_job(client, answer.get_json()["url"], alice)
        assert summary["state"] == "SUCCESS" and summary["params"]["detail"] == "summary"
        assert summary["result"]["detail"] == "summary" and summary["result"]["readings"] == 360
        brief = summary["result"]["metrics"]["t"]["buckets"]
        assert [(b["count"], b["min"], b["max"]) for b in brief] == [
            (b["count"], b["min"], b["max"]) for b in buckets
        ]
        assert "p95" not in brief[0]

    # Other tenants' devices and tenants do not exist for mallory.
    body = {**REPORT, "device": "acme-1"}
    assert client.post("/api/reports", json=body, headers=mallory).status_code == 404
    body = {**REPORT, "tenant": "acme"}
    assert client.post("/api/reports", json=body, headers=mallory).status_code == 404


def test_export_download_is_streamed_to_its_tenant_only(pipeline: Pipeline, app: Flask) -> None:
    client = app.test_client()
    alice, mallory = token(pipeline, "alice"), token(pipeline, "mallory")
    body = {"from": T0, "to": T0 + 600, "device": "acme-1"}
    answer = client.post("/api/exports", json=body, headers=alice)
    assert answer.status_code == 202
    url = answer.get_json()["url"]
    # No worker yet: the job waits in the queue.
    assert client.get(url, headers=alice).get_json()["state"] == "PENDING"
    early = client.get(url + "/download", headers=alice)
    assert early.status_code == 409 and early.get_json()["error"] == "not_ready"

    with running_worker(pipeline):
        done = wait_job(client, url, alice)
    assert done["state"] == "SUCCESS", done
    assert done["result"]["download"] == url + "/download"
    assert done["result"]["readings"] == 60 and done["result"]["rows"] == 120

    download = client.get(url + "/download", headers=alice)
    assert download.status_code == 200
    assert download.mimetype == "text/csv"
    assert "attachment" in download.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(download.get_data(as_text=True))))
    assert rows[0] == ["ts", "device", "stream", "metric", "value"]
    assert len(rows) == 121
    assert {(r[3], r[4]) for r in rows[1:] if r[3] == "ok"} == {("ok", "true")}
    assert sorted(float(r[4]) for r in rows[1:] if r[3] == "t") == sorted(
        float(i % 7) for i in range(60)
    )
    assert all(r[1] == "acme-1" for r in rows[1:])

    assert client.get(url + "/download", headers=mallory).status_code == 404
    assert client.get(url, headers=mallory).status_code == 404
    report = client.post("/api/reports", json=REPORT, headers=alice).get_json()
    assert client.get(report["url"] + "/download", headers=alice).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/reports", {"to": T0 + 60, "bucket": 60}, "'from' is required"),
        ("/api/reports", {"from": "soon", "to": T0 + 60, "bucket": 60}, "'from'"),
        ("/api/reports", {"from": T0, "to": T0 - 60, "bucket": 60}, "'to' must be later"),
        ("/api/reports", {"from": T0, "to": T0 + 60}, "'bucket' is required"),
        ("/api/reports", {"from": T0, "to": T0 + 60, "bucket": -5}, "at least 1 second"),
        ("/api/reports", {"from": T0, "to": T0 + 86400 * 30, "bucket": 1}, "buckets"),
        ("/api/reports", {"from": T0, "to": T0 + 60, "bucket": 60, "z": 99}, "'z'"),
        ("/api/reports", {"from": T0, "to": T0 + 60, "bucket": 60, "device": 7}, "'device'"),
        ("/api/reports", {"from": T0, "to": T0 + 60, "bucket": 60, "tenant": 3}, "'tenant'"),
        ("/api/reports", {"from": T0, "to": T0 + 60, "bucket": 60, "detail": 1}, "'detail'"),
        ("/api/reports", {"from": T0, "to": T0 + 90, "bucket": 30, "detail": "summary"}, "60 s"),
        ("/api/exports", {"from": T0}, "'to' is required"),
        ("/api/exports", [1, 2], "JSON object"),
    ],
)
def test_bad_parameters_answer_400_with_a_clear_message(
    pipeline: Pipeline, app: Flask, path: str, body: Any, message: str
) -> None:
    answer = app.test_client().post(path, json=body, headers=token(pipeline, "alice"))
    assert answer.status_code == 400
    assert message in answer.get_json()["message"]
    assert pipeline.db[job_records.JOBS].count_documents({}) == 0


def test_operator_must_name_a_tenant_and_callers_must_log_in(
    pipeline: Pipeline, app: Flask
) -> None:
    client = app.test_client()
    answer = client.post("/api/reports", json=REPORT, headers=token(pipeline, "ops"))
    assert answer.status_code == 400 and "tenant" in answer.get_json()["message"]
    assert client.post("/api/reports", json=REPORT).status_code == 401
    assert client.get("/api/jobs/whatever").status_code == 401


def test_session_requests_need_the_csrf_token(pipeline: Pipeline, app: Flask) -> None:
    client = app.test_client()
    assert (
        client.post("/api/login", json={"user": "alice", "password": PASSWORD}).status_code == 200
    )
    refused = client.post("/api/exports", json={"from": T0, "to": T0 + 60})
    assert refused.status_code == 400 and refused.get_json()["error"] == "csrf_failed"
    csrf = client.get("/api/me").get_json()["csrf_token"]
    answer = client.post(
        "/api/exports", json={"from": T0, "to": T0 + 60}, headers={"X-CSRF-Token": csrf}
    )
    assert answer.status_code == 202


@pytest.mark.settings(job_queue_max_length=1, jobs_dispatch_per_tenant=2, jobs_reserved_processes=0)
def test_a_full_job_queue_answers_503(pipeline: Pipeline, app: Flask) -> None:
    client, alice = app.test_client(), token(pipeline, "alice")
    assert client.post("/api/reports", json=REPORT, headers=alice).status_code == 202
    answer = client.post("/api/reports", json=REPORT, headers=alice)
    assert answer.status_code == 503 and answer.get_json()["error"] == "queue_full"
    assert pipeline.db[job_records.JOBS].count_documents({}) == 1  # the refused job is not kept
    assert pipeline.depth("cpu") == 1
