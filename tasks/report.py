"""Telemetry reports: per metric and time bucket count, min, max, mean, p50, p95, outliers.

Readings are streamed with ``find`` and a projection and folded in Python: FerretDB
1.24 (SQLite) has no indexed reads and little aggregation, and the same code then
runs on MongoDB. Memory is bounded: each (metric, bucket) keeps its numeric values
in a compact ``array('d')`` (8 bytes a value, needed for the exact p50/p95 and the
outlier count) plus the ``OUTLIERS_LISTED`` largest and smallest readings with their
device and time (for the outlier list); a report refuses ranges holding more than
``report_max_readings`` readings before it reads any of them.

Percentiles interpolate linearly between order statistics (numpy's default,
``statistics.quantiles(method="inclusive")``). Outliers are values whose z-score
against their own bucket (population standard deviation) exceeds ``z`` in magnitude.
"""

from __future__ import annotations

import heapq
import math
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo.database import Database

from fairway.domain.job_params import ReportParams
from fairway.kernel.times import iso_z
from fairway.storage.mongo import TELEMETRY

OUTLIERS_LISTED = 5  # per metric and bucket: the most extreme readings, with device and time
PROGRESS_EVERY_S = 0.5  # least time between two progress updates
READ_BATCH = 5000  # documents per cursor batch

Progress = Callable[[int, int], None]


class TooManyReadings(ValueError):
    """The range holds more readings than one job may process."""


class TooManySeries(ValueError):
    """The report would hold more (metric, bucket) pairs than one job may keep."""

    def __init__(self, limit: int, detail: str) -> None:
        super().__init__(
            f"the report would hold more than {limit} (metric, bucket) pairs "
            f"(FAIRWAY_REPORT_MAX_SERIES): {detail}; choose a larger bucket, a shorter range "
            "or one device"
        )


def check_series(params: ReportParams, limit: int) -> None:
    """:class:`TooManySeries` if the range alone has more buckets than ``limit`` pairs
    (every metric needs one pair per bucket); the metrics are counted while folding."""
    buckets = math.ceil((params.end - params.start) / params.bucket_s)
    if buckets > limit:
        raise TooManySeries(limit, f"the range has {buckets} buckets for each metric")


class BucketStats:
    """One metric's values in one time bucket."""

    __slots__ = ("high", "low", "values")

    def __init__(self) -> None:
        self.values = array("d")
        self.high: list[tuple[float, int, int]] = []  # min-heap of the largest (v, ts_ms, dev)
        self.low: list[tuple[float, int, int]] = []  # min-heap of the smallest, v negated

    def add(self, value: float, ts_ms: int, device: int) -> None:
        """Fold in one value."""
        self.values.append(value)
        high, low = self.high, self.low
        if len(high) < OUTLIERS_LISTED:
            heapq.heappush(high, (value, ts_ms, device))
            heapq.heappush(low, (-value, ts_ms, device))
            return
        if value > high[0][0]:
            heapq.heapreplace(high, (value, ts_ms, device))
        if -value > low[0][0]:
            heapq.heapreplace(low, (-value, ts_ms, device))

    def summary(self, z: float, devices: list[str]) -> dict[str, Any]:
        """count, min, max, mean, std, p50, p95, outlier count and the most extreme ones."""
        ordered = sorted(self.values)
        n = len(ordered)
        mean = math.fsum(ordered) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in ordered) / n)
        outliers: list[dict[str, Any]] = []
        count = 0
        if std > 0:
            lo, hi = mean - z * std, mean + z * std
            count = bisect_left(ordered, lo) + (n - bisect_right(ordered, hi))
            candidates = {(v, t, d) for v, t, d in self.high}
            candidates |= {(-v, t, d) for v, t, d in self.low}
            for value, ts_ms, device in candidates:
                score = (value - mean) / std
                if abs(score) > z:
                    outliers.append(
                        {
                            "device": devices[device],
                            "ts": iso_z(ts_ms / 1000),
                            "value": value,
                            "z": score,
                        }
                    )
            outliers.sort(key=lambda o: (-abs(o["z"]), o["ts"], o["device"]))
        return {
            "count": n,
            "min": ordered[0],
            "max": ordered[-1],
            "mean": mean,
            "std": std,
            "p50": percentile(ordered, 50),
            "p95": percentile(ordered, 95),
            "outliers": count,
            "top_outliers": outliers[:OUTLIERS_LISTED],
        }


def percentile(ordered: list[float], p: float) -> float:
    """The ``p``-th percentile of sorted values, interpolated linearly."""
    k = (len(ordered) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def is_number(value: object) -> bool:
    """Numbers count; booleans and strings do not."""
    return isinstance(value, int | float) and not isinstance(value, bool)


class ReportBuilder:
    """Folds readings, one at a time, into per-metric, per-bucket statistics."""

    def __init__(self, params: ReportParams, max_series: int | None = None) -> None:
        self.params = params
        self.max_series = max_series  # (metric, bucket) pairs; None: no bound
        self.series = 0
        self.start_ms = round(params.start * 1000)
        self.bucket_ms = params.bucket_s * 1000
        self.stats: dict[str, dict[int, BucketStats]] = {}
        self.devices: list[str] = []
        self._device_index: dict[str, int] = {}
        self.readings = 0

    def add(self, ts_ms: int, device: str, values: dict[str, Any]) -> None:
        """Fold in one reading (``ts_ms``: device time in epoch milliseconds)."""
        self.readings += 1
        bucket = (ts_ms - self.start_ms) // self.bucket_ms
        dev = self._device_index.get(device)
        if dev is None:
            dev = self._device_index[device] = len(self.devices)
            self.devices.append(device)
        for metric, value in values.items():
            if not is_number(value):
                continue
            per_bucket = self.stats.get(metric)
            if per_bucket is None:
                per_bucket = self.stats[metric] = {}
            acc = per_bucket.get(bucket)
            if acc is None:
                self._count_series()
                acc = per_bucket[bucket] = BucketStats()
            acc.add(float(value), ts_ms, dev)

    def _count_series(self) -> None:
        self.series += 1
        if self.max_series is not None and self.series > self.max_series:
            raise TooManySeries(
                self.max_series, f"{len(self.stats)} metrics in the readings so far"
            )

    def result(self, tenant: str) -> dict[str, Any]:
        """The report as plain JSON; buckets without readings are left out."""
        p = self.params
        metrics: dict[str, Any] = {}
        for metric in sorted(self.stats):
            buckets = []
            for index in sorted(self.stats[metric]):
                start = p.start + index * p.bucket_s
                summary = self.stats[metric][index].summary(p.z, self.devices)
                buckets.append({"start": iso_z(start), **summary})
            total = sum(b["count"] for b in buckets)
            metrics[metric] = {
                "count": total,
                "min": min(b["min"] for b in buckets),
                "max": max(b["max"] for b in buckets),
                "mean": math.fsum(b["mean"] * b["count"] for b in buckets) / total,
                "buckets": buckets,
            }
        return {
            "tenant": tenant,
            "device": p.device,
            "from": iso_z(p.start),
            "to": iso_z(p.end),
            "bucket_s": p.bucket_s,
            "z": p.z,
            "readings": self.readings,
            "devices": len(self.devices),
            "metrics": metrics,
        }


def reading_query(tenant: str, device: str | None, start: float, end: float) -> dict[str, Any]:
    """The telemetry filter of a job: the tenant, maybe one device, device time in range."""
    query: dict[str, Any] = {
        "tenant": tenant,
        "ts": {"$gte": datetime.fromtimestamp(start, UTC), "$lt": datetime.fromtimestamp(end, UTC)},
    }
    if device is not None:
        query["device"] = device
    return query


def count_readings(db: Database, query: dict[str, Any], limit: int) -> int:
    """Readings matching ``query``; :class:`TooManyReadings` beyond ``limit``."""
    total = db[TELEMETRY].count_documents(query, limit=limit + 1)
    if total > limit:
        raise TooManyReadings(
            f"the range holds more than {limit} readings (FAIRWAY_REPORT_MAX_READINGS); "
            "choose a shorter range or one device"
        )
    return total


def stream_readings(
    db: Database, query: dict[str, Any], fields: Iterable[str], db_share: float = 1.0
) -> Iterable[dict[str, Any]]:
    """Matching readings with only ``fields``; ``ts`` comes as epoch milliseconds.

    With ``db_share`` below 1 the stream pauses after each cursor batch, so reading
    (and folding) takes at most that share of the wall time.
    """
    # DatetimeMS skips building a datetime per document: about a third of decode time.
    collection = db.get_collection(
        TELEMETRY,
        codec_options=CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_MS),
    )
    projection = {"_id": 0, **dict.fromkeys(fields, 1)}
    cursor = collection.find(query, projection, batch_size=READ_BATCH)
    return cursor if db_share >= 1 else paced(cursor, db_share, READ_BATCH)


def paced(
    items: Iterable[Any], share: float, every: int, sleep: Callable[[float], None] = time.sleep
) -> Iterator[Any]:
    """``items``, pausing after each ``every`` so the time spent on them is ``share`` of all."""
    if not 0 < share <= 1:
        raise ValueError("the share must be in (0, 1]")
    started = time.monotonic()
    for n, item in enumerate(items, 1):
        yield item
        if n % every == 0:
            busy = time.monotonic() - started
            sleep(busy * (1 - share) / share)
            started = time.monotonic()


class Throttle:
    """Calls ``progress(done, total)`` at most every ``PROGRESS_EVERY_S`` (and at the end)."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total = progress, total
        self.next_at = 0.0

    def __call__(self, done: int, force: bool = False) -> None:
        """Report ``done`` if enough time has passed (or ``force``)."""
        now = time.monotonic()
        if force or now >= self.next_at:
            self.next_at = now + PROGRESS_EVERY_S
            self.progress(done, self.total)


def build_report(
    db: Database,
    tenant: str,
    params: ReportParams,
    max_readings: int,
    progress: Progress,
    db_share: float = 1.0,
    max_series: int | None = None,
) -> dict[str, Any]:
    """Compute a report from the stored readings, reporting progress as it goes."""
    if max_series is not None:
        check_series(params, max_series)
    query = reading_query(tenant, params.device, params.start, params.end)
    throttle = Throttle(progress, count_readings(db, query, max_readings))
    throttle(0, force=True)
    builder = ReportBuilder(params, max_series)
    readings = stream_readings(db, query, ("ts", "device", "values"), db_share)
    for n, doc in enumerate(readings, 1):
        builder.add(int(doc["ts"]), doc["device"], doc.get("values") or {})
        if n > max_readings:  # readings stored after the count: keep the bound anyway
            raise TooManyReadings(f"the range holds more than {max_readings} readings")
        if n % 1000 == 0:
            throttle(n)
    throttle(builder.readings, force=True)
    return builder.result(tenant)
