"""Fair dispatch: release each tenant's waiting jobs into the ``cpu`` queue, at most
``FAIRWAY_JOBS_DISPATCH_PER_TENANT`` of a tenant's at a time, and all tenants' together
within the ``cpu`` processes (:mod:`fairway.storage.job_pool`).

The records and their states are :mod:`fairway.storage.job_dispatch`; this module
publishes. :func:`fill` releases a tenant's oldest waiting jobs while it has a free
dispatch slot; the web app calls it on each submission, and every Celery worker runs a
:class:`Dispatcher` thread in its main process that calls it when a job of the tenant
ends (woken by the worker's request hooks, so no pool process does it) and sweeps every
``FAIRWAY_JOBS_DISPATCH_INTERVAL_S``: slots and releases left half-done by a crash, then
every tenant with waiting jobs. When a job ends, the process it held goes to the tenant
whose turn it is (:func:`fill_turns`), not back to the tenant whose job ended. A job not
released is counted with its reason in ``fairway_jobs_deferred_total{reason,tenant}``.
Imports Celery, never Flask.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from pymongo.errors import PyMongoError

import tasks.job_metrics as job_metrics
from fairway.kernel.settings import Settings
from fairway.storage import job_dispatch, job_pool, job_records
from tasks.base import ENDED_HOOKS, EXPORT_TASK, REPORT_TASK, worker_database

log = logging.getLogger("fairway.jobs.dispatch")

TASKS = {job_records.REPORT: REPORT_TASK, job_records.EXPORT: EXPORT_TASK}
ERROR_PAUSE_S = 1.0  # after a failed pass (database or broker down), before the next


def publish(app: Celery, job: dict[str, Any]) -> None:
    """Send a claimed job's task with its release number (waits for the confirm)."""
    kwargs = {
        "tenant": job["tenant"],
        "user": job["user"],
        "params": job["params"],
        "release": int(job["release"]),
    }
    app.send_task(TASKS[job["kind"]], kwargs=kwargs, task_id=job["_id"])


def release(app: Celery, db: Any, job: dict[str, Any]) -> None:
    """Publish a claimed job and mark it published; if the publish fails, the job waits
    again (its slot freed) and the error propagates."""
    try:
        publish(app, job)
    except Exception:
        if job_dispatch.unclaim(db, job):
            raise
        # A worker started it: the publish got through after all.
    # The job is released from here on: a database error below must not fail the
    # submission that released it (the web app would answer 500 for a queued job).
    try:
        job_dispatch.mark_published(db, job)
    except PyMongoError as exc:  # a sweep redoes the release unless a worker started it
        _not_noted("job release not marked published", job, exc)
    try:
        job_pool.note_turn(db, job["tenant"])
    except PyMongoError as exc:  # a lost turn only shifts the order
        _not_noted("job turn not noted", job, exc)
    job_metrics.RELEASED.labels(job["tenant"]).inc()
    created = job_records.as_utc(job["created"])
    job_metrics.WAIT_SECONDS.observe(max(0.0, (datetime.now(UTC) - created).total_seconds()))


def _not_noted(what: str, job: dict[str, Any], exc: PyMongoError) -> None:
    log.warning(what, extra={"job": job["_id"], "tenant": job["tenant"], "error": repr(exc)})


def pool(settings: Settings) -> job_pool.Pool:
    """The ``cpu`` processes and their reserve, from settings."""
    return job_pool.Pool(settings.jobs_cpu_processes, settings.reserved_processes)


def fill(app: Celery, db: Any, tenant: str, settings: Settings) -> int:
    """Release ``tenant``'s oldest waiting jobs while it has a free dispatch slot and a
    process is free for it; how many were released. A job left waiting is counted with
    its reason. A failed publish stops it (the job waits again) and raises."""
    return _fill(app, db, tenant, settings)[0]


def _fill(app: Celery, db: Any, tenant: str, settings: Settings) -> tuple[int, str | None]:
    """:func:`fill`, and why its tenant's next waiting job was not released (None: none
    waits)."""
    released = 0
    while True:
        job, why = job_dispatch.claim_or_defer(
            db,
            tenant,
            settings.jobs_dispatch_per_tenant,
            settings.job_ttl_s,
            settings.jobs_dispatch_idle_max,
            pool(settings),
        )
        if job is None:
            if why is not None:
                job_metrics.DEFERRED.labels(why, tenant).inc()
            return released, why
        release(app, db, job)
        released += 1


def fill_turns(
    app: Celery, db: Any, settings: Settings, waiting: dict[str, tuple[int, datetime]]
) -> dict[str, int]:
    """Fill the tenants with ``waiting`` jobs in turn order (:func:`job_pool.turn_order`)
    until no process is left for the next; how many each had released.

    The order puts the fewest released first, so once the pool is full no later tenant
    gets a process, and once only reserved processes are free (``pool_reserved``) only
    the tenants with none released, at the front, may take one: the rest are not tried.
    """
    released = job_pool.released_by_tenant(db, job_dispatch.DISPATCH)
    order = job_pool.turn_order(waiting, released, job_pool.last_turns(db))
    done: dict[str, int] = {}
    reserved_only = False
    for tenant in order:
        if reserved_only and released.get(tenant, 0) > 0:
            break
        done[tenant], why = _fill(app, db, tenant, settings)
        if why == job_pool.POOL_FULL:
            break
        reserved_only = reserved_only or why == job_pool.POOL_RESERVED
    return done


def sweep(app: Celery, db: Any, settings: Settings) -> dict[str, int]:
    """Redo what crashes left half-done, then give every tenant with waiting jobs its
    turn (oldest waiting first); set the waiting gauges. Returns what it did."""
    done = {"slots": job_dispatch.reclaim_slots(db, settings.job_ttl_s), "releases": 0}
    job_metrics.RECOVERED.labels("slot").inc(done["slots"])
    for stale in job_dispatch.stale_releases(db):
        again = job_dispatch.reclaim(db, stale)
        if again is None:
            continue  # a worker started it after all, or another dispatcher took it
        log.warning("job released again", extra={"job": again["_id"], "release": again["release"]})
        job_metrics.RECOVERED.labels("release").inc()
        release(app, db, again)
        done["releases"] += 1
    waiting = job_dispatch.waiting(db)
    now = datetime.now(UTC)
    for tenant, released in fill_turns(app, db, settings, waiting).items():
        n, oldest = waiting[tenant]
        waiting[tenant] = (n - released, oldest)
    _set_gauges(waiting, now)
    return done


_gauged: set[str] = set()


def _set_gauges(waiting: dict[str, tuple[int, datetime]], now: datetime) -> None:
    for tenant in _gauged - set(waiting):  # labels only for tenants with waiting jobs
        job_metrics.WAITING.remove(tenant)
        job_metrics.OLDEST_WAIT.remove(tenant)
    for tenant, (n, oldest) in waiting.items():
        job_metrics.WAITING.labels(tenant).set(n)
        job_metrics.OLDEST_WAIT.labels(tenant).set((now - oldest).total_seconds())
    _gauged.clear()
    _gauged.update(waiting)


class Dispatcher:
    """The worker main process's dispatch thread: fills a tenant's slots when one of its
    jobs ends, and sweeps every ``jobs_dispatch_interval_s``."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.settings: Settings = app.fairway_settings
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tenants: set[str] = set()
        self._sweep_now = False
        self._thread = threading.Thread(target=self._run, name="fairway-dispatch", daemon=True)

    def start(self) -> None:
        """Start the thread (once the worker consumes)."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (worker shutdown)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def job_ended(self, tenant: str | None, revoked: bool = False) -> None:
        """A job's delivery ended (any outcome): fill its tenant's slots soon. A revoked
        job never ran to free its slots: sweep now, which takes them back."""
        with self._lock:
            if tenant:
                self._tenants.add(tenant)
            self._sweep_now = self._sweep_now or revoked
        self._wake.set()

    def _run(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_sweep - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                tenants, self._tenants = self._tenants, set()
                if self._sweep_now:
                    next_sweep, self._sweep_now = 0.0, False
            try:
                db = worker_database(self.app)
                if tenants:  # a job ended: its process goes to whoever's turn it is
                    fill_turns(self.app, db, self.settings, job_dispatch.waiting(db))
                if time.monotonic() >= next_sweep:
                    sweep(self.app, db, self.settings)
                    next_sweep = time.monotonic() + self.settings.jobs_dispatch_interval_s
            except Exception as exc:  # the database or the broker is away: try again soon
                log.warning("dispatch pass failed", extra={"error": repr(exc)})
                next_sweep = min(next_sweep, time.monotonic() + ERROR_PAUSE_S)
                self._stop.wait(ERROR_PAUSE_S)


_running: dict[str, Dispatcher] = {}


def start(app: Celery) -> None:
    """Start this worker's dispatcher and hook it to job ends (``worker_ready``)."""
    if "dispatcher" in _running:
        return
    dispatcher = Dispatcher(app)
    _running["dispatcher"] = dispatcher
    ENDED_HOOKS.append(dispatcher.job_ended)
    dispatcher.start()


def stop() -> None:
    """Stop this worker's dispatcher (``worker_shutdown``)."""
    dispatcher = _running.pop("dispatcher", None)
    if dispatcher is not None:
        ENDED_HOOKS.remove(dispatcher.job_ended)
        dispatcher.stop()
