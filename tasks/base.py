"""What the Celery app, the tasks and the web app share: queues, task names, the task base.

:class:`JobTask` gives each task its settings and a database handle of its own
(one client per Celery app and process: pymongo is not fork-safe), reports progress
and publishes ``job.<tenant>.<user>`` when a job ends. For user jobs (those with a
job record) it also counts deliveries, so a job whose deliveries keep killing their
worker fails ``worker_lost`` instead of being redelivered forever
(``FAIRWAY_JOBS_MAX_ATTEMPTS``), and frees the job's quota slots when it ends.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Celery, Task
from celery.exceptions import Ignore, Retry
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request
from kombu import Exchange, Queue
from pymongo.database import Database
from pymongo.errors import AutoReconnect, PyMongoError

import tasks.job_metrics as job_metrics
from fairway.domain.job_params import JobFailed
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage import job_dispatch, job_records, mongo

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

# Called in the worker's main process, off its event loop's work, when a job delivery
# ends (tenant, revoked): the fair dispatcher (tasks.dispatch) registers here.
ENDED_HOOKS: list[Callable[[str | None, bool], None]] = []


def job_ended(tenant: Any, revoked: bool = False) -> None:
    """Tell the hooks a job delivery of ``tenant`` ended (main process)."""
    for hook in list(ENDED_HOOKS):
        hook(tenant if isinstance(tenant, str) else None, revoked)


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Celery's worker subclasses this class for each task (create_request_cls) with
        # an on_success of its own, which would replace ours: count around that one.
        super().__init_subclass__(**kwargs)
        generated = cls.__dict__.get("on_success")
        if generated is None:
            return

        def on_success(self: MeteredRequest, failed__retval__runtime: Any, **kwargs: Any) -> None:
            handler = functools.partial(generated, self)
            self.returned(failed__retval__runtime, handler, **kwargs)

        cls.on_success = on_success  # type: ignore[method-assign]

    def on_success(self, failed__retval__runtime: Any, **kwargs: Any) -> None:
        """The pool process returned (a result, or an exception it caught)."""
        self.returned(failed__retval__runtime, super().on_success, **kwargs)

    def returned(
        self, failed__retval__runtime: Any, handler: Callable[..., Any], **kwargs: Any
    ) -> None:
        """Count a returned delivery, let ``handler`` (Celery's on_success) ack and
        report it, and tell the hooks a job ended (a failure tells them in on_failure).
        A retry is not an end: its next delivery is counted when it returns."""
        failed, retval, runtime = failed__retval__runtime
        if not (failed and isinstance(retval.exception, Retry)):
            job_metrics.FINISHED.labels(self.task.name, "failure" if failed else "success").inc()
            if runtime is not None:
                job_metrics.SECONDS.labels(self.task.name).observe(runtime)
        handler(failed__retval__runtime, **kwargs)
        if not failed:
            job_ended((self.kwargs or {}).get("tenant"))

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        """The pool process failed the job, or died under it (then it is requeued)."""
        exc = exc_info.exception
        if isinstance(getattr(exc, "exc", exc), WorkerLostError):  # maybe wrapped by billiard
            job_metrics.WORKER_LOST.labels(self.task.name).inc()
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        job_ended((self.kwargs or {}).get("tenant"))

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """A time limit passed: soft (the task is told) or hard (its process is killed)."""
        if not soft:
            job_metrics.FINISHED.labels(self.task.name, "time_limit").inc()
        super().on_timeout(soft, timeout)
        if not soft:
            job_ended((self.kwargs or {}).get("tenant"))


class JobTask(Task):
    """Base of Fairway's tasks: settings, a database handle, retries, completion events."""

    Request = MeteredRequest
    autoretry_for = (AutoReconnect,)
    retry_backoff = 1
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 5
    # Not a child of the delivery it retries: Celery would store the retry's id as a
    # nested array in the result, which FerretDB refuses (the job then showed FAILURE).
    retry_kwargs = {"add_to_parent": False}
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

    def before_start(self, task_id: str, args: Any, kwargs: dict[str, Any]) -> None:
        """In the pool process, before the task runs: count this delivery of a user job,
        and fail the job (``worker_lost``, acked, not run) if ``jobs_max_attempts``
        earlier deliveries never came back, each having taken its worker process down."""
        if not (kwargs.get("tenant") and kwargs.get("user")):
            return  # maintenance tasks have no job record
        db = self.db
        number = kwargs.get("release")  # fairly dispatched jobs carry their release number
        dispatched = isinstance(number, int)
        if isinstance(number, int) and not self._may_start(task_id, number):
            # The job was released again after a dispatcher crash: this message is
            # the superseded release's; the later one runs it (acked, nothing stored).
            logger.warning(
                "superseded job message ignored", extra={"job": task_id, "release": number}
            )
            raise Ignore()
        try:
            lost = job_records.count_delivery(db, task_id, started=dispatched)
        except AutoReconnect as exc:  # fail open: the task meets the same error and retries
            logger.warning("delivery not counted", extra={"job": task_id, "error": repr(exc)})
            return
        self.request.delivery_counted = True  # its return is counted as its end
        limit = self.settings.jobs_max_attempts
        if lost is None or lost < limit:
            return
        message = (
            f"the job was stopped: its worker process died {lost} times while running it "
            f"(killed or out of memory), the most allowed (FAIRWAY_JOBS_MAX_ATTEMPTS={limit}); "
            "choose a shorter range or one device, or ask an operator"
        )
        logger.error("job failed after lost deliveries", extra={"job": task_id, "lost": lost})
        job_records.mark_failed(db, task_id, job_records.WORKER_LOST, message)
        raise JobFailed(message, job_records.WORKER_LOST)

    def _may_start(self, task_id: str, number: int) -> bool:
        """Whether release ``number`` may run (see :func:`job_dispatch.start`). Unlike
        the delivery count this does not fail open: a database error here could run a
        superseded release beside its successor, so the delivery is retried instead
        (a new message with the same release; after ``max_retries`` the job fails)."""
        try:
            return job_dispatch.start(self.db, task_id, number)
        except AutoReconnect as exc:
            logger.warning("job start not decided", extra={"job": task_id, "error": repr(exc)})
            countdown = get_exponential_backoff_interval(
                factor=self.retry_backoff,
                retries=self.request.retries,
                maximum=self.retry_backoff_max,
                full_jitter=self.retry_jitter,
            )
            raise self.retry(exc=exc, countdown=countdown, add_to_parent=False) from exc

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Any,
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """In the pool process, once the delivery returned a result or failed."""
        self._count_end(task_id)

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: dict[str, Any], einfo: Any
    ) -> None:
        """The delivery returned to be retried (Celery skips ``after_return`` then)."""
        self._count_end(task_id)

    def _count_end(self, task_id: str) -> None:
        # Only a delivery counted as it started: an end without a start would hide a
        # later delivery that takes its worker down.
        if not getattr(self.request, "delivery_counted", False):
            return
        try:
            job_records.count_end(self.db, task_id)
        except PyMongoError as exc:
            logger.warning("delivery end not counted", extra={"job": task_id, "error": repr(exc)})

    def _finished(self, task_id: str, kwargs: dict[str, Any], state: str) -> None:
        tenant, user = kwargs.get("tenant"), kwargs.get("user")
        if tenant and user:
            try:  # the job has ended: its quota slots are free (a lost release is reclaimed)
                job_records.release(self.db, task_id)
            except PyMongoError as exc:
                logger.warning(
                    "quota slots not released", extra={"job": task_id, "error": repr(exc)}
                )
            publish_job_event(self.app, job_event(tenant, user, task_id, self.kind, state))

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: dict[str, Any]) -> None:
        """After the result is stored: tell the user."""
        self._finished(task_id, kwargs, "SUCCESS")

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: dict[str, Any], einfo: Any
    ) -> None:
        """After the failure is stored (also called by the main process on a hard limit)."""
        self._finished(task_id, kwargs, "FAILURE")
