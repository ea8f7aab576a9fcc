"""Prometheus metrics of the rejections archiver."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ARCHIVED = Counter(
    "fairway_archiver_archived_total", "Rejected messages stored in rejections", ["reason"]
)


TRIMMED = Counter(
    "fairway_archiver_trimmed_total", "Archived rejections deleted beyond the per-device cap"
)


FAILED = Counter(
    "fairway_archiver_failed_total",
    "Rejected messages the database refused 3 times (logged, then acked)",
)


BUFFERED = Gauge("fairway_archiver_buffered", "Rejected messages received and not yet written")


TRIM_SECONDS = Histogram(
    "fairway_archiver_trim_seconds",
    "Time of one trim pass",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


DB_UP = Gauge("fairway_archiver_db_up", "1 when the last insert succeeded")
