"""The Celery app: RabbitMQ broker, MongoDB results, JSON only, two queues.

``make_celery(settings)`` builds the app for a worker, for beat and for the web app
(which only sends tasks and reads results). Queues are declared through kombu with
Fairway's usual arguments (bounded, ``reject-publish``, queue type from settings), and
publishes wait for the broker's confirm, so a full queue is an error the API can
answer (503), never a job dropped silently.

Jobs are long and idempotent: ``acks_late`` (the message is acked after the task
ends) with ``reject_on_worker_lost`` (a crashed pool process puts it back), prefetch
multiplier 1 (a worker holds only the job it runs), soft and hard time limits from
settings, and retries with backoff when MongoDB is briefly unreachable.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task, signals
from celery.worker.request import Request
from flask import Flask
from kombu import Exchange, Queue
from pymongo.errors import AutoReconnect

from fairway import log, metrics, topology
from fairway.settings import Settings
from tasks import job_metrics

CPU, MAINTENANCE = "cpu", "maintenance"
REPORT_TASK, EXPORT_TASK, RETENTION_TASK = "fairway.report", "fairway.export", "fairway.retention"
ROUTES = {
    REPORT_TASK: {"queue": CPU},
    EXPORT_TASK: {"queue": CPU},
    RETENTION_TASK: {"queue": MAINTENANCE},
    "celery.backend_cleanup": {"queue": MAINTENANCE},
}
JOBS_EXCHANGE = Exchange("jobs", type="direct", durable=True)
EVENTS_EXCHANGE = Exchange(topology.EVENTS, type="topic", durable=True)

logger = logging.getLogger("fairway.jobs")


def queues(settings: Settings) -> tuple[Queue, ...]:
    """The ``cpu`` and ``maintenance`` queues, bounded like every Fairway queue."""
    arguments = {
        "x-max-length": settings.job_queue_max_length,
        "x-overflow": "reject-publish",
        "x-queue-type": settings.queue_type,
    }
    return tuple(
        Queue(name, JOBS_EXCHANGE, routing_key=name, durable=True, queue_arguments=arguments)
        for name in (CPU, MAINTENANCE)
    )


def make_celery(settings: Settings) -> Celery:
    """A configured Celery app for ``settings`` (tasks registered, nothing connected yet)."""
    app = Celery("fairway", set_as_current=False)
    app.conf.update(
        broker_url=settings.celery_broker_url or settings.amqp_url,
        broker_connection_retry_on_startup=True,
        broker_heartbeat=30,
        # Every publish waits for the broker's confirm: a nack (queue full) raises.
        broker_transport_options={"confirm_publish": True},
        result_backend=settings.mongo_url,
        result_expires=settings.job_ttl_s,
        accept_content=["json"],
        result_accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        task_queues=queues(settings),
        task_default_queue=CPU,
        task_default_exchange=JOBS_EXCHANGE.name,
        task_default_routing_key=CPU,
        task_routes=ROUTES,
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        # 0 means no limit (Celery's None).
        task_soft_time_limit=settings.report_soft_time_limit_s or None,
        task_time_limit=settings.report_time_limit_s or None,
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        worker_prefetch_multiplier=1,
        # After a lost broker connection the unacked job is redelivered elsewhere:
        # finishing it here as well would only do the work twice.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "retention": {"task": RETENTION_TASK, "schedule": settings.retention_interval_s},
        },
        timezone="UTC",
        enable_utc=True,
    )
    app.fairway_settings = settings  # type: ignore[attr-defined]
    import tasks.jobs  # noqa: F401  (registers the tasks; imports the web app, so lazily)

    return app


# -- inside the worker ----------------------------------------------------------------
_flask_apps: dict[tuple[int, int], Flask] = {}
_flask_lock = threading.Lock()


def flask_app(celery_app: Celery) -> Flask:
    """The Flask app tasks run in: one per Celery app and process (pymongo is not
    fork-safe, so each pool process opens its own client)."""
    key = (id(celery_app), os.getpid())
    with _flask_lock:
        app = _flask_apps.get(key)
        if app is None:
            from tasks import records
            from web import create_app
            from web.database import get_db

            settings: Settings = celery_app.fairway_settings  # type: ignore[attr-defined]
            # Workers sign nothing; a random key lets them run without FAIRWAY_SECRET_KEY.
            secret = settings.secret_key or secrets.token_urlsafe(32)
            app = create_app({"FAIRWAY_SETTINGS": settings, "SECRET_KEY": secret})
            with app.app_context():
                records.ensure_indexes(get_db())
            _flask_apps[key] = app
    return app


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
    """Base of Fairway's tasks: Flask app context, retries, completion events."""

    Request = MeteredRequest
    autoretry_for = (AutoReconnect,)
    retry_backoff = 1
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 5
    kind = "job"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with flask_app(self.app).app_context():
            return super().__call__(*args, **kwargs)

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


# -- worker process set-up -------------------------------------------------------------
@signals.setup_logging.connect(weak=False, dispatch_uid="fairway.jobs.logging")
def _json_logs(**_: Any) -> None:
    log.setup(Settings.from_env().log_level)


@signals.worker_init.connect(weak=False, dispatch_uid="fairway.jobs.metrics")
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    settings = getattr(getattr(sender, "app", None), "fairway_settings", None)
    if settings is not None and settings.metrics_port:
        metrics.serve(settings.metrics_port)
