"""Prometheus metrics of every Fairway process.

Labels are bounded: ``tenant`` by the number of provisioned tenants, ``reason`` by
:class:`fairway.reasons.Reason`. Each process serves them on ``FAIRWAY_METRICS_PORT``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RELAY_ACCEPTED = Counter(
    "fairway_relay_accepted_total",
    "Readings accepted and confirmed into a tenant queue",
    ["tenant"],
)
RELAY_REJECTED = Counter(
    "fairway_relay_rejected_total", "Messages refused and confirmed into rejected", ["reason"]
)
RELAY_REJECTED_DROPPED = Counter(
    "fairway_relay_rejected_dropped_total",
    "Refused messages that the full rejected queue did not take (counted, then acked)",
    ["reason"],
)
RELAY_UNCONFIRMED = Gauge(
    "fairway_relay_unconfirmed", "Republished messages awaiting the broker's confirm"
)
RELAY_PARKED = Gauge("fairway_relay_parked", "Deliveries waiting for a device registry look-up")

SCHED_STORED = Counter("fairway_scheduler_stored_total", "Readings written to MongoDB", ["tenant"])
SCHED_DUPLICATES = Counter(
    "fairway_scheduler_duplicates_total",
    "Redelivered readings already stored (duplicate key, acked as done)",
    ["tenant"],
)
SCHED_DEAD_LETTERED = Counter(
    "fairway_scheduler_dead_lettered_total",
    "Messages the database refused for good, dead-lettered to rejected",
    ["tenant"],
)
SCHED_BUFFERED = Gauge(
    "fairway_scheduler_buffered", "Messages held in the local DRR buffer", ["tenant"]
)
SCHED_BACKLOG = Gauge(
    "fairway_scheduler_backlog", "Messages waiting in the tenant queue at the broker", ["tenant"]
)
SCHED_PREFETCH = Gauge(
    "fairway_scheduler_prefetch", "Prefetch granted to the tenant's channel", ["tenant"]
)
SCHED_INFLIGHT_BATCHES = Gauge(
    "fairway_scheduler_inflight_batches", "Batches handed to writers and not yet written"
)
SCHED_BATCH_SIZE = Histogram(
    "fairway_scheduler_batch_size",
    "Readings per write batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
SCHED_WRITE_SECONDS = Histogram("fairway_scheduler_write_seconds", "Time of one insert_many batch")
SCHED_LAG_SECONDS = Histogram(
    "fairway_scheduler_lag_seconds",
    "From relay receipt to durable write",
    ["tenant"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SCHED_DB_UP = Gauge("fairway_scheduler_db_up", "1 when the last database write succeeded")


def serve(port: int) -> None:
    """Expose metrics over HTTP on ``port`` (0 means do not serve)."""
    if port:
        start_http_server(port)
