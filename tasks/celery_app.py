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

from typing import Any

from celery import Celery, signals

import tasks.dispatch as dispatch
import tasks.jobs  # noqa: F401  (registers the shared tasks)
import tasks.result_backend as result_backend
from fairway.amqp.connection import kombu_ssl, kombu_url
from fairway.kernel import log, metrics
from fairway.kernel.settings import Settings
from tasks.base import (
    CPU,
    JOBS_EXCHANGE,
    RETENTION_TASK,
    ROLLUP_TASK,
    ROUTES,
    job_ended,
    queues,
)


def make_celery(settings: Settings) -> Celery:
    """A configured Celery app for ``settings`` (tasks registered, nothing connected yet)."""
    app = Celery("fairway", set_as_current=False)
    broker_url = settings.celery_broker_url or settings.amqp_url
    app.conf.update(
        # Several brokers (a cluster's nodes): kombu fails over between them, round robin.
        broker_url=kombu_url(broker_url),
        # amqps://: verify the broker's chain (FAIRWAY_AMQP_CA_FILE) and host name.
        broker_use_ssl=kombu_ssl(broker_url, settings),
        broker_connection_retry_on_startup=True,
        broker_heartbeat=30,
        # Every publish waits for the broker's confirm: a nack (queue full) raises.
        broker_transport_options={"confirm_publish": True},
        # A pool process rides out a lost database connection (tasks.result_backend).
        result_backend=result_backend.backend_url(settings.mongo_url),
        **result_backend.backend_settings(),
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
            "rollup": {"task": ROLLUP_TASK, "schedule": 60.0},
        },
        timezone="UTC",
        enable_utc=True,
    )
    app.fairway_settings = settings
    return app


# -- worker process set-up -------------------------------------------------------------
@signals.setup_logging.connect(weak=False, dispatch_uid="fairway.jobs.logging")
def _json_logs(**_: Any) -> None:
    log.setup(Settings.from_env().log_level)


@signals.worker_init.connect(weak=False, dispatch_uid="fairway.jobs.metrics")
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    settings = getattr(getattr(sender, "app", None), "fairway_settings", None)
    if settings is not None and settings.metrics_port:
        metrics.serve(settings.metrics_port)


@signals.worker_process_init.connect(weak=False, dispatch_uid="fairway.jobs.store_retries")
def _retry_stores(**_: Any) -> None:
    result_backend.retry_in_this_process()


@signals.worker_ready.connect(weak=False, dispatch_uid="fairway.jobs.dispatch")
def _start_dispatcher(sender: Any = None, **_: Any) -> None:
    # The fair dispatcher runs in each worker's main process (tasks.dispatch).
    app = getattr(sender, "app", None)
    if app is not None and getattr(app, "fairway_settings", None) is not None:
        dispatch.start(app)


@signals.worker_shutdown.connect(weak=False, dispatch_uid="fairway.jobs.dispatch_stop")
def _stop_dispatcher(**_: Any) -> None:
    dispatch.stop()


@signals.task_revoked.connect(weak=False, dispatch_uid="fairway.jobs.revoked")
def _revoked(request: Any = None, **_: Any) -> None:
    # A revoked job never runs to free its slots: the dispatcher's sweep takes them back.
    kwargs = getattr(request, "kwargs", None)
    job_ended(kwargs.get("tenant") if isinstance(kwargs, dict) else None, revoked=True)
