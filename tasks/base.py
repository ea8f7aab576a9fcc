"""What the Celery app, the tasks and the web app share: queues, task names, the task base.

:class:`JobTask` gives each task its settings and a database handle of its own
(one client per Celery app and process: pymongo is not fork-safe), reports progress
and publishes ``job.<tenant>.<user>`` when a job ends.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task
from celery.worker.request import Request
from kombu import Exchange, Queue
from pymongo.database import Database
from pymongo.errors import AutoReconnect

import tasks.job_metrics as job_metrics
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage import job_records, mongo

CPU, MAINTENANCE = "cpu", "maintenance"


REPORT_TASK, EXPORT_TASK, RETENTION_TASK = "fairway.report", "fairway.export", "fairway.retention"
ROLLUP_TASK = "fairway.rollup"


ROUTES = {
    REPORT_TASK: {"queue": CPU},
    EXPORT_TASK: {"queue": CPU},
    RETENTION_TASK: {"queue": MAINTENANCE},
    ROLLUP_TASK: {"queue": MAINTENANCE},
    "celery.backend_cleanup": {"queue": MAINTENANCE},
}


JOBS_EXCHANGE = Exchange("jobs", type="direct", durable=True)


EVENTS_EXCHANGE = Exchange(topology.EVENTS, type="topic", durable=True)


logger = logging.getLogger("fairway.jobs")


def queues(settings: Settings) -> tuple[Queue, ...]:
    """The ``cpu`` and ``maintenance`` queues, bounded like every Fairway queue."""
    arguments = topology.queue_arguments(
        settings.job_queue_max_length, queue_type=settings.queue_type
    )
    return tuple(
        Queue(name, JOBS_EXCHANGE, routing_key=name, durable=True, queue_arguments=arguments)
        for name in (CPU, MAINTENANCE)
    )


# -- inside the worker ----------------------------------------------------------------
_databases: dict[tuple[int, int], Database] = {}
_databases_lock = threading.Lock()


def worker_database(celery_app: Celery) -> Database:
    """The database tasks use: one client per Celery app and process (pymongo is not
    fork-safe, so each pool process opens its own)."""
    key = (id(celery_app), os.getpid())
    with _databases_lock:
        db = _databases.get(key)
        if db is None:
            db = mongo.connect(celery_app.fairway_settings)
            job_records.ensure_indexes(db)
            _databases[key] = db
    return db


def job_event(
    tenant: str, user: str, job_id: str, kind: str, state: str, now: datetime | None = None
) -> dict[str, Any]:
    """The ``job.<tenant>.<user>`` event body (shared interface)."""
    return {
        "kind": "job",
        "tenant": tenant,
        "user": user,
        "job": job_id,
        "task": kind,
        "state": state,
        "url": f"/api/jobs/{job_id}",
        "at": (now or datetime.now(UTC)).isoformat(),
    }


def publish_job_event(celery_app: Celery, body: dict[str, Any]) -> bool:
    """Publish a job event to ``events`` through Celery's producer pool; False if it failed.

    Events are notifications (transient); the job's state stays queryable, so a
    failed publish is logged and counted, never allowed to fail the job.
    """
    routing_key = f"job.{body['tenant']}.{body['user']}"
    try:
        with celery_app.producer_or_acquire() as producer:
            producer.publish(
                body,
                exchange=EVENTS_EXCHANGE,
                routing_key=routing_key,
                serializer="json",
                delivery_mode=1,
                declare=[EVENTS_EXCHANGE],
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
    except Exception:
        job_metrics.EVENTS_FAILED.inc()
        logger.exception("job event not published", extra={"routing_key": routing_key})
        return False
    return True


class MeteredRequest(Request):
    """The worker's (main process) view of each job, counted in Prometheus metrics."""

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        """A pool process took the job."""
        job_metrics.STARTED.labels(self.task.name).inc()
        if self.delivery_info.get("redelivered"):
            job_metrics.REDELIVERED.labels(self.task.name).inc()
        super().on_accepted(pid, time_accepted)

    def on_success(self, failed__retval__runtime: Any, **kwargs: Any) -> None:
        """The pool process returned (a result, or an exception it caught)."""
        failed, _retval, runtime = failed__retval__runtime
        job_metrics.FINISHED.labels(self.task.name, "failure" if failed else "success").inc()
        job_metrics.SECONDS.labels(self.task.name).observe(runtime)
        super().on_success(failed__retval__runtime, **kwargs)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """A time limit passed: soft (the task is told) or hard (its process is killed)."""
        if not soft:
            job_metrics.FINISHED.labels(self.task.name, "time_limit").inc()
        super().on_timeout(soft, timeout)


class JobTask(Task):
    """Base of Fairway's tasks: settings, a database handle, retries, completion events."""

    Request = MeteredRequest
    autoretry_for = (AutoReconnect,)
    retry_backoff = 1
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 5
    kind = "job"

    @property
    def settings(self) -> Settings:
        """The settings the Celery app was made with."""
        settings: Settings = self.app.fairway_settings
        return settings

    @property
    def db(self) -> Database:
        """This process's database handle."""
        return worker_database(self.app)

    def progress(self, done: int, total: int) -> None:
        """Store ``PROGRESS`` with ``{"done", "total"}`` for the API to show."""
        self.update_state(state="PROGRESS", meta={"done": done, "total": total})

    def _finished(self, task_id: str, kwargs: dict[str, Any], state: str) -> None:
        tenant, user = kwargs.get("tenant"), kwargs.get("user")
        if tenant and user:
            publish_job_event(self.app, job_event(tenant, user, task_id, self.kind, state))

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: dict[str, Any]) -> None:
        """After the result is stored: tell the user."""
        self._finished(task_id, kwargs, "SUCCESS")

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: dict[str, Any], einfo: Any
    ) -> None:
        """After the failure is stored (also called by the main process on a hard limit)."""
        self._finished(task_id, kwargs, "FAILURE")
