"""Prometheus metrics of the Celery workers (served by the worker's main process).

The pool processes run the tasks; the main process sees every job start and end
(``tasks.celery_app.MeteredRequest``), so the counters live there and one
``FAIRWAY_METRICS_PORT`` per worker serves them. Labels are bounded by the task names
and the tenants; the fair dispatcher's run in the main process too (the web app counts
its own releases with the same metrics).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STARTED = Counter("fairway_jobs_started_total", "Jobs a pool process took", ["task"])
REDELIVERED = Counter(
    "fairway_jobs_redelivered_total",
    "Jobs taken again after a worker crash or lost connection (acks_late)",
    ["task"],
)
FINISHED = Counter(
    "fairway_jobs_finished_total",
    "Jobs ended, by outcome (success, failure, time_limit)",
    ["task", "outcome"],
)
SECONDS = Histogram(
    "fairway_job_seconds",
    "Run time of one job",
    ["task"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
WORKER_LOST = Counter(
    "fairway_jobs_worker_lost_total",
    "Deliveries whose pool process died under them (killed, out of memory, os._exit)",
    ["task"],
)
EVENTS_FAILED = Counter(
    "fairway_job_events_failed_total", "job.* events that could not be published"
)

# -- fair dispatch (tasks.dispatch): counted by whichever process releases (the web app
# on submission, each worker's dispatcher when a job ends or on its sweep) -------------
RELEASED = Counter(
    "fairway_jobs_released_total",
    "Jobs released from their tenant's waiting list into the cpu queue, by tenant",
    ["tenant"],
)
WAIT_SECONDS = Histogram(
    "fairway_job_wait_seconds",
    "Time a job waited for its tenant's turn, from submission to release",
    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
DEFERRED = Counter(
    "fairway_jobs_deferred_total",
    "Times a tenant's waiting job was not released when its turn was tried, by reason "
    "(tenant_share: the tenant has its share released; pool_full: every cpu process holds "
    "a released job; pool_reserved: the free processes are kept for tenants with none) "
    "and tenant",
    ["reason", "tenant"],
)
RECOVERED = Counter(
    "fairway_jobs_dispatch_recovered_total",
    "Dispatch left half-done by a crash and redone by a sweep (slot: a slot taken back; "
    "release: a job released again under a new number)",
    ["what"],
)
# Set by each worker's dispatcher sweep (every FAIRWAY_JOBS_DISPATCH_INTERVAL_S): the same
# figures from every worker, so aggregate with max, not sum.
WAITING = Gauge(
    "fairway_jobs_waiting", "Jobs waiting for their tenant's turn, by tenant", ["tenant"]
)
OLDEST_WAIT = Gauge(
    "fairway_jobs_oldest_wait_seconds",
    "Age of the tenant's oldest waiting job at the last sweep",
    ["tenant"],
)
