"""``/api/reports``, ``/api/exports``, ``/api/jobs``: heavy work goes to Celery workers.

A request only checks its parameters, records the job (tenant, user, kind,
parameters) and sends the task: it answers ``202 Accepted`` with the job's URL at
once. The worker stores progress and the result in MongoDB and publishes
``job.<tenant>.<user>`` when it ends; ``GET /api/jobs/<id>`` shows state, progress
and result, ``GET /api/jobs/<id>/download`` streams an export's CSV. Jobs are
visible to their tenant's users (operators see all); anyone else gets 404.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from amqp.exceptions import MessageNacked
from billiard.exceptions import TimeLimitExceeded
from celery import Celery
from celery.exceptions import BackendGetMetaError, BackendStoreError, SoftTimeLimitExceeded
from flask import Blueprint, Response, current_app, stream_with_context
from prometheus_client import Counter
from pymongo.errors import AutoReconnect

import tasks.dispatch as dispatch
import tasks.export as export
import web.models as models
from fairway.domain.job_params import (
    DATABASE_UNAVAILABLE,
    OTHER_FAILURE,
    TIME_LIMIT,
    JobFailed,
    parse_export,
    parse_report,
)
from fairway.kernel.settings import Settings
from fairway.kernel.times import iso_z
from fairway.storage import job_dispatch, job_records
from tasks.celery_app import make_celery
from tasks.report import TooManySeries, check_series
from web.auth import (
    current_user,
    login_required,
    tenant_scope,
    visible_device,
    visible_or_404,
)
from web.database import get_db
from web.errors import ApiError
from web.openapi import operation

bp = Blueprint("jobs", __name__, url_prefix="/api")
log = logging.getLogger(__name__)

SUBMITTED = Counter("fairway_jobs_submitted_total", "Jobs accepted by the API", ["kind"])
REFUSED = Counter(
    "fairway_jobs_refused_total",
    "Jobs the API refused or could not queue (job_quota, queue_full, broker_unavailable), "
    "by tenant",
    ["reason", "tenant"],
)
QUOTA = "job_quota"
DOWNLOAD_CHUNK = 256 * 1024
_celery_lock = threading.Lock()


def get_celery() -> Celery:
    """The Celery app this Flask app sends tasks with (one per Flask app)."""
    app = current_app
    celery = app.extensions.get("fairway_celery")
    if celery is None:
        with _celery_lock:
            celery = app.extensions.get("fairway_celery")
            if celery is None:
                celery = make_celery(app.config["FAIRWAY_SETTINGS"])
                job_records.ensure_indexes(get_db())
                app.extensions["fairway_celery"] = celery
    return celery


def _settings() -> Settings:
    return current_app.config["FAIRWAY_SETTINGS"]


def _job_tenant(tenant: str | None) -> str:
    scope = tenant_scope(tenant)
    if scope is None:
        raise ApiError(400, "bad_parameter", "operators must name the 'tenant' of the job")
    return scope


def _check_device(tenant: str, device: str | None) -> None:
    if device is not None:
        visible_device(device, tenant)


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    for _ in range(10):  # a chain, bounded in case it loops
        if exc is None:
            return False
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _submit(kind: str, tenant: str, params: dict[str, Any]) -> tuple[dict, int, dict]:
    """Take the job's quota slots, record it waiting, give its tenant its turn, answer 202
    (429 beyond the user's or tenant's quota of unfinished jobs, 503 if it cannot be
    queued)."""
    db = get_db()
    user = current_user()
    settings = _settings()
    job_id = str(uuid.uuid4())
    celery = get_celery()  # before the slots: it may fail, holding none
    try:
        job_records.reserve(
            db,
            job_id,
            tenant,
            user.id,
            settings.jobs_max_per_user,
            settings.jobs_max_per_tenant,
            settings.job_ttl_s,
        )
    except job_records.QuotaExceeded as exc:
        REFUSED.labels(QUOTA, tenant).inc()
        raise ApiError(429, QUOTA, str(exc)) from None
    try:
        job_records.create_job(db, job_id, tenant, user.id, kind, params, job_records.WAITING)
    except Exception:
        job_records.release(db, job_id)
        raise
    try:
        # Releases the tenant's oldest waiting jobs (this one, or it waits its turn: a
        # worker's dispatcher releases it when one of the tenant's jobs ends).
        dispatch.fill(celery, db, tenant, settings)
    except Exception as exc:  # kombu re-raises a nack (queue full) as a connection error
        if not job_dispatch.withdraw(db, job_id):
            # Released (or being released) before the failure, which came after it (a
            # later job's publish, or the database on the next claim): it is queued, and a
            # sweep finishes a release cut short. Answering 500 would invite a resubmission.
            log.warning(
                "job queued; dispatch failed after it", extra={"job": job_id, "error": repr(exc)}
            )
            SUBMITTED.labels(kind).inc()
            url = f"/api/jobs/{job_id}"
            return {"job": job_id, "url": url}, 202, {"Location": url}
        job_records.release(db, job_id)
        if _caused_by(exc, MessageNacked):
            REFUSED.labels("queue_full", tenant).inc()
            raise ApiError(
                503, "queue_full", "too many jobs are waiting; try again later"
            ) from None
        REFUSED.labels("broker_unavailable", tenant).inc()
        log.warning("job not queued", extra={"job": job_id, "error": repr(exc)})
        raise ApiError(503, "broker_unavailable", "jobs cannot be queued right now") from None
    SUBMITTED.labels(kind).inc()
    url = f"/api/jobs/{job_id}"
    return {"job": job_id, "url": url}, 202, {"Location": url}


WAITING = "WAITING"  # a job state Celery does not have: waiting for its tenant's turn

JOB_ERRORS = {
    404: ["not_found"],
    429: ["job_quota"],
    503: ["queue_full", "broker_unavailable"],
}
JOB_LINKS = {"GetJob": {"operationId": "show_job", "parameters": {"job_id": "$response.body#/job"}}}


@bp.post("/reports")
@login_required
@operation(
    body=models.NewReport,
    status=202,
    answer=models.Submitted,
    errors=JOB_ERRORS,
    headers={"Location": "the job's URL"},
    links=JOB_LINKS,
)
def create_report(body: models.NewReport) -> tuple[dict, int, dict]:
    """Queue a report: per bucket count, min, max, mean (and std, p50, p95, outliers with
    detail full); 202 with the job's URL."""
    tenant = _job_tenant(body.tenant)
    try:
        params = parse_report(body.model_dump(by_alias=True), _settings())
    except ValueError as exc:
        raise ApiError(400, "bad_parameter", str(exc)) from None
    try:
        check_series(params, _settings().report_max_series)
    except TooManySeries as exc:
        raise ApiError(400, "bad_parameter", str(exc)) from None
    _check_device(tenant, params.device)
    return _submit(job_records.REPORT, tenant, params.to_json())


@bp.post("/exports")
@login_required
@operation(
    body=models.NewExport,
    status=202,
    answer=models.Submitted,
    errors=JOB_ERRORS,
    headers={"Location": "the job's URL"},
    links=JOB_LINKS,
)
def create_export(body: models.NewExport) -> tuple[dict, int, dict]:
    """Queue a CSV export of the readings; 202 with the job's URL."""
    tenant = _job_tenant(body.tenant)
    try:
        params = parse_export(body.model_dump(by_alias=True))
    except ValueError as exc:
        raise ApiError(400, "bad_parameter", str(exc)) from None
    _check_device(tenant, params.device)
    return _submit(job_records.EXPORT, tenant, params.to_json())


def visible_job(job_id: str) -> dict[str, Any]:
    """The job record if the caller may see it, else 404."""
    job = job_records.get_job(get_db(), job_id) if len(job_id) <= 64 else None
    return visible_or_404(job, "job", job_id)


# The job's own reads (AutoReconnect after the task's retries) or its state stores
# (Celery's BackendStoreError after the result backend's retries, tasks.result_backend).
DATABASE_ERRORS = (AutoReconnect, BackendStoreError, BackendGetMetaError)


def failure_message(exc: Any) -> str:
    """Why a job failed, for the user."""
    if isinstance(exc, JobFailed):
        return str(exc)
    if isinstance(exc, TimeLimitExceeded):
        limit = _settings().report_time_limit_s
        return f"the job ran past its hard time limit of {limit:g} s and was stopped"
    if isinstance(exc, DATABASE_ERRORS):
        return (
            "the database could not be reached, also on the job's retries; "
            "try again later or ask an operator"
        )
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = _settings().report_soft_time_limit_s
        return f"the job ran past its time limit of {limit:g} s and was stopped"
    return f"the job failed ({type(exc).__name__}); try again or ask an operator"


def failure_reason(exc: Any, job: dict[str, Any]) -> str:
    """The stable code of a failed job (``job_params.JOB_FAILURE_REASONS``)."""
    refused = job.get("failure")
    if isinstance(refused, dict) and refused.get("reason"):
        return str(refused["reason"])  # the worker refused it (job_records.mark_failed)
    if isinstance(exc, JobFailed):
        return exc.reason
    if isinstance(exc, TimeLimitExceeded | SoftTimeLimitExceeded):
        return TIME_LIMIT
    if isinstance(exc, DATABASE_ERRORS):  # retried, then failed
        return DATABASE_UNAVAILABLE
    return OTHER_FAILURE


def _params_json(params: dict[str, Any]) -> dict[str, Any]:
    out = dict(params)
    for key, name in (("start", "from"), ("end", "to")):
        if key in out:
            out[name] = iso_z(out.pop(key))
    return out


def job_json(job: dict[str, Any]) -> dict[str, Any]:
    """The job's record, state, progress and result."""
    result = get_celery().AsyncResult(job["_id"])
    state, info = result.state, result.info
    ahead = None
    if state == "PENDING" and job.get("dispatch") == job_records.WAITING:
        # Not in the cpu queue yet: it waits for its tenant's dispatch slot (Celery
        # knows nothing of it and would say PENDING, like a lost id).
        state, ahead = WAITING, job_dispatch.ahead(get_db(), job)
    out: dict[str, Any] = {
        "job": job["_id"],
        "kind": job["kind"],
        "tenant": job["tenant"],
        "user": job["user"],
        "params": _params_json(job.get("params", {})),
        "created": iso_z(job.get("created")),
        "state": state,
        "ahead": ahead,
        "progress": None,
        "result": None,
        "error": None,
        "reason": None,
        "url": f"/api/jobs/{job['_id']}",
    }
    if state == "PROGRESS" and isinstance(info, dict):
        out["progress"] = {"done": info.get("done"), "total": info.get("total")}
    elif state == "SUCCESS":
        out["result"] = info
    elif state == "FAILURE":
        out["error"] = failure_message(info)
        out["reason"] = failure_reason(info, job)
    return out


@bp.get("/jobs")
@login_required
@operation(query=models.JobsQuery, answer=models.Jobs, errors={404: ["not_found"]})
def list_jobs(query: models.JobsQuery) -> dict[str, Any]:
    """The latest jobs of the caller's tenant (``?tenant=`` for operators), newest first."""
    scope = tenant_scope(query.tenant)
    jobs = job_records.list_jobs(get_db(), scope, query.limit)
    return {
        "jobs": [
            {
                "job": j["_id"],
                "kind": j["kind"],
                "tenant": j["tenant"],
                "user": j["user"],
                "created": iso_z(j.get("created")),
                "url": f"/api/jobs/{j['_id']}",
            }
            for j in jobs
        ]
    }


@bp.get("/jobs/<job_id>")
@login_required
@operation(answer=models.Job, errors={404: ["not_found"]})
def show_job(job_id: str) -> dict[str, Any]:
    """State (``WAITING`` for its tenant's turn, with ``ahead`` of its tenant's jobs
    before it; ``PENDING`` in the queue, ``STARTED``, ``PROGRESS``, ``SUCCESS``,
    ``FAILURE``, ``RETRY``), progress ``{"done", "total"}``, and the result or the reason
    it failed."""
    return job_json(visible_job(job_id))


@bp.get("/jobs/<job_id>/download")
@login_required
@operation(
    content_type="text/csv",
    errors={404: ["not_found"], 409: ["not_ready"]},
    headers={"Content-Disposition": "attachment; filename=export-<job>.csv"},
)
def download(job_id: str) -> Response:
    """Stream a finished export's CSV."""
    job = visible_job(job_id)
    if job["kind"] != job_records.EXPORT:
        raise ApiError(404, "not_found", "only exports have a download")
    db = get_db()
    if export.file_info(db, job_id) is None:
        state = get_celery().AsyncResult(job_id).state
        raise ApiError(409, "not_ready", f"the export is not ready (state {state})")
    source = export.open_file(db, job_id)

    def chunks() -> Iterator[bytes]:
        with source:
            while chunk := source.read(DOWNLOAD_CHUNK):
                yield chunk

    return Response(
        stream_with_context(chunks()),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="export-{job_id}.csv"',
            "Content-Length": str(source.length),
        },
    )
