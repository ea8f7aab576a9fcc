"""Telemetry reports: per metric and time bucket count, min, max, mean, p50, p95, outliers.

A job's range is planned without a scan (:mod:`fairway.storage.ranges`: pending marks,
rollups by tenant-day or device-day, device state for the recent hours), then each
planned device-hour's readings are read by ``hk`` equality with a projection, filtered
to the range and folded in Python, the same way on FerretDB and MongoDB. Both layouts of
``telemetry`` are read (:mod:`fairway.kernel.batch_document`): a device batch's
document is expanded into its readings, each kept or not by its own ``ts`` (the
document's ``ts`` is only its latest reading's). Memory is
bounded: each (metric, bucket) keeps its numeric values in a compact ``array('d')``
(8 bytes a value, needed for the exact p50/p95 and the outlier count) plus the
``OUTLIERS_LISTED`` largest and smallest readings with their device and time (for the
outlier list); a report refuses a range whose rollups already count more than
``report_max_readings`` readings before it reads any of them, and stops once it has
read more. Progress totals come from the rollups' counts (:func:`planned_progress`).

A *summary* report (``detail: "summary"``) gives count, min, max and mean only, from
``rollups`` or ``rollup_minutes`` (the bucket and range must be whole hours or whole
minutes), folding from raw readings only the hours whose rollup is missing or stale.

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
from datetime import UTC, datetime, timedelta
from typing import Any

from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo.database import Database

from fairway.domain.job_params import (
    BAD_PARAMETERS,
    FULL,
    SUMMARY,
    JobFailed,
    ReportParams,
    summary_step,
)
from fairway.kernel.batch_document import each_reading, with_batch_fields
from fairway.kernel.contract import hour_key
from fairway.kernel.times import iso_z
from fairway.storage import ranges
from fairway.storage.mongo import TELEMETRY
from fairway.storage.rollups import HourFold, Stats, fold_stored_hour
from fairway.storage.telemetry import HOUR

OUTLIERS_LISTED = 5  # per metric and bucket: the most extreme readings, with device and time
PROGRESS_EVERY_S = 0.5  # least time between two progress updates
READ_BATCH = 5000  # documents per cursor batch

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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
        return report_answer(tenant, p, FULL, self.readings, len(self.devices), metrics)


def report_answer(
    tenant: str,
    p: ReportParams,
    detail: str,
    readings: int,
    devices: int,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """The stored report: its parameters, what it read, and per-metric figures."""
    return {
        "tenant": tenant,
        "device": p.device,
        "from": iso_z(p.start),
        "to": iso_z(p.end),
        "bucket_s": p.bucket_s,
        "z": p.z,
        "detail": detail,
        "readings": readings,
        "devices": devices,
        "metrics": metrics,
    }


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _ms(at: datetime) -> int:
    """Epoch milliseconds of ``at``, truncated as BSON stores it."""
    return (at - EPOCH) // timedelta(milliseconds=1)


def plan_job(
    db: Database, tenant: str, device: str | None, start: float, end: float, now: datetime
) -> ranges.RangePlan:
    """The device-hours of a job's range (marks, rollups, device state: no scan)."""
    return ranges.plan_range(db, tenant, device, _utc(start), _utc(end), now)


def check_limit(plan: ranges.RangePlan, limit: int) -> None:
    """:class:`TooManyReadings` if the rollups already count more than ``limit`` readings."""
    if plan.counted_at_least() > limit:
        raise TooManyReadings(
            f"the range holds more than {limit} readings (FAIRWAY_REPORT_MAX_READINGS); "
            "choose a shorter range or one device"
        )


def read_planned(
    db: Database,
    plan: ranges.RangePlan,
    fields: Iterable[str],
    db_share: float = 1.0,
    hour_read: Callable[[ranges.DeviceHour, int], None] | None = None,
) -> Iterable[dict[str, Any]]:
    """The planned readings in range with only ``fields``, read device-hour by device-hour
    by ``hk`` (``ts`` comes as epoch milliseconds); ``hour_read(dh, n)`` after each.

    ``device`` among ``fields`` is the device-hour's device, set here: a stored reading
    keeps it only in its ``_id`` (documents written before also as a field; both are
    the device of the hour key read).

    With ``db_share`` below 1 the stream pauses after every ``READ_BATCH`` readings, so
    reading (and folding) takes at most that share of the wall time.
    """
    # DatetimeMS skips building a datetime per document: about a third of decode time.
    collection = db.get_collection(
        TELEMETRY,
        codec_options=CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_MS),
    )
    with_device = "device" in fields
    projection = {"_id": 0, **dict.fromkeys((*fields, "ts"), 1)}
    projection.pop("device", None)
    # A batch document's readings come with its values whatever ``fields`` says.
    projection = with_batch_fields(projection)
    start_ms, end_ms = _ms(plan.start), _ms(plan.end)

    def readings() -> Iterator[dict[str, Any]]:
        for dh in plan.device_hours():
            hour, device = dh
            kept = 0
            key = {"hk": hour_key(plan.tenant, device, hour)}
            stored = collection.find(key, projection, batch_size=READ_BATCH)
            for doc in each_reading(stored):  # a batch element's ts is a DatetimeMS too
                if start_ms <= int(doc["ts"]) < end_ms:
                    kept += 1
                    if with_device:
                        doc["device"] = device
                    yield doc
            if hour_read is not None:
                hour_read(dh, kept)

    return readings() if db_share >= 1 else paced(readings(), db_share, READ_BATCH)


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
    """Calls ``progress(done, total)`` at most every ``PROGRESS_EVERY_S`` (and at the end).

    ``total`` may be corrected as the job learns more (:meth:`hour_read`); ``done`` is
    never shown above it.
    """

    def __init__(self, progress: Progress, total: int, plan: ranges.RangePlan | None = None):
        self.progress, self.total, self.plan = progress, total, plan
        self.next_at = 0.0

    def __call__(self, done: int, force: bool = False) -> None:
        """Report ``done`` if enough time has passed (or ``force``)."""
        now = time.monotonic()
        if force or now >= self.next_at:
            self.next_at = now + PROGRESS_EVERY_S
            self.progress(done, max(done, self.total))

    def hour_read(self, dh: ranges.DeviceHour, kept: int) -> None:
        """Replace a device-hour's estimate in the total by the readings it really held."""
        if self.plan is not None:
            self.total += kept - self.plan.estimate(dh)


def planned_progress(progress: Progress, plan: ranges.RangePlan) -> Throttle:
    """Progress over a plan: the total starts as the rollups' count (:meth:`RangePlan.estimate`
    per device-hour, 0 for hours without a rollup) and is corrected hour by hour as each is
    read, so it is exact when the last hour has been read. Never ``count_documents``."""
    throttle = Throttle(progress, plan.estimated_total(), plan)
    throttle(0, force=True)
    return throttle


def build_report(
    db: Database,
    tenant: str,
    params: ReportParams,
    max_readings: int,
    progress: Progress,
    db_share: float = 1.0,
    now: datetime | None = None,
    max_series: int | None = None,
) -> dict[str, Any]:
    """Compute a report, reporting progress as it goes: from the stored readings
    (``detail`` full), or from rollups (summary)."""
    now = now or datetime.now(UTC)
    if max_series is not None:
        check_series(params, max_series)
    if params.detail == SUMMARY:
        return build_summary(db, tenant, params, progress, now)
    plan = plan_job(db, tenant, params.device, params.start, params.end, now)
    check_limit(plan, max_readings)
    throttle = planned_progress(progress, plan)
    builder = ReportBuilder(params, max_series)
    readings = read_planned(db, plan, ("device", "values"), db_share, throttle.hour_read)
    for n, doc in enumerate(readings, 1):
        builder.add(int(doc["ts"]), doc["device"], doc.get("values") or {})
        if n > max_readings:  # more than the rollups counted: keep the bound anyway
            raise TooManyReadings(f"the range holds more than {max_readings} readings")
        if n % 1000 == 0:
            throttle(n)
    throttle(builder.readings, force=True)
    return builder.result(tenant)


# -- summary reports: rollups only ------------------------------------------------------
class SummaryBuilder:
    """Per metric and bucket count, min, max and sum, merged from rollup figures."""

    def __init__(self, params: ReportParams) -> None:
        self.params = params
        self.stats: dict[str, dict[int, Stats]] = {}
        self.devices: set[str] = set()
        self.readings = 0

    def add(self, at: datetime, metrics: dict[str, Stats]) -> None:
        """Merge ``{metric: {n, min, max, sum}}`` of the hour or minute starting ``at``."""
        index = int((at.timestamp() - self.params.start) // self.params.bucket_s)
        for metric, s in metrics.items():
            per_bucket = self.stats.setdefault(metric, {})
            acc = per_bucket.get(index)
            if acc is None:
                per_bucket[index] = {k: s[k] for k in ("n", "min", "max", "sum")}
            else:
                acc["n"] += s["n"]
                acc["min"] = min(acc["min"], s["min"])
                acc["max"] = max(acc["max"], s["max"])
                acc["sum"] += s["sum"]

    def count(self, device: str, n: int) -> None:
        """Count ``n`` readings of ``device``."""
        if n:
            self.readings += n
            self.devices.add(device)

    def add_folds(self, device: str, hour: datetime, folds: dict[str, HourFold], step: int) -> None:
        """Merge one device-hour folded from its raw readings."""
        for fold in folds.values():
            self.count(device, fold.n)
            if step == 3600:
                self.add(hour, fold.metrics)
            else:
                for minute, stats in fold.minutes.items():
                    self.add(hour + timedelta(minutes=minute), stats)

    def add_minute_columns(self, hour: datetime, columns: dict[str, dict[str, list]]) -> None:
        """Merge a ``rollup_minutes`` document's columns."""
        for metric, col in columns.items():
            for i, minute in enumerate(col["m"]):
                stats = {k: col[k][i] for k in ("n", "min", "max", "sum")}
                self.add(hour + timedelta(minutes=minute), {metric: stats})

    def result(self, tenant: str) -> dict[str, Any]:
        """The summary report as plain JSON; buckets without readings are left out."""
        p = self.params
        metrics: dict[str, Any] = {}
        for metric in sorted(self.stats):
            buckets: list[dict[str, Any]] = []
            for index, s in sorted(self.stats[metric].items()):
                buckets.append(
                    {
                        "start": iso_z(p.start + index * p.bucket_s),
                        "count": s["n"],
                        "min": float(s["min"]),
                        "max": float(s["max"]),
                        "mean": s["sum"] / s["n"],
                    }
                )
            total = sum(s["n"] for s in self.stats[metric].values())
            metrics[metric] = {
                "count": total,
                "min": min(b["min"] for b in buckets),
                "max": max(b["max"] for b in buckets),
                "mean": math.fsum(s["sum"] for s in self.stats[metric].values()) / total,
                "buckets": buckets,
            }
        return report_answer(tenant, p, SUMMARY, self.readings, len(self.devices), metrics)


def build_summary(
    db: Database, tenant: str, params: ReportParams, progress: Progress, now: datetime
) -> dict[str, Any]:
    """count/min/max/mean per metric and bucket from rollups (hourly, or per minute), the
    hours not rolled up yet (marked, or too recent) folded from their raw readings.

    Whole hours with a current rollup are read from ``rollups`` (bucket a multiple of an
    hour) or ``rollup_minutes`` (a multiple of a minute); marked or recent hours, and in
    minute steps the range's partial first and last hours, from the readings by ``hk``.
    """
    step = summary_step(params.start, params.end, params.bucket_s)
    if step is None:  # parse_report refuses it (400); a task message could still carry it
        raise JobFailed(
            "a summary needs a bucket of whole hours (or minutes) and a range on whole hours "
            "(or minutes); ask for 'detail': 'full'",
            BAD_PARAMETERS,
        )
    builder = SummaryBuilder(params)
    start, end = _utc(params.start), _utc(params.end)
    whole_minutes: dict[tuple[str, datetime], set[datetime]] = {}  # (device, day): hours
    partial: list[ranges.DeviceHour] = []  # minute steps: first/last hour partly in range

    def current(roll: dict[str, Any]) -> None:  # an hourly rollup that holds the whole hour
        hour, device = roll["hour"], roll["device"]
        if step == 3600:
            builder.count(device, roll["n"])
            builder.add(hour, roll["metrics"])
        elif start <= hour and hour + HOUR <= end:
            builder.count(device, roll["n"])
            whole_minutes.setdefault((device, hour.replace(hour=0)), set()).add(hour)
        else:
            partial.append((hour, device))

    fields = ("metrics",) if step == 3600 else ()
    plan = ranges.plan_range(db, tenant, params.device, start, end, now, fields, current)
    throttle = planned_progress(progress, plan)
    for (device, day), hours in sorted(whole_minutes.items()):
        for doc in ranges.minute_rollups(db, tenant, device, day):
            if doc["hour"] in hours:
                builder.add_minute_columns(doc["hour"], doc["metrics"])
        throttle(builder.readings)
    raw = sorted(plan.pending | plan.live | set(partial))
    for hour, device in raw:
        folds = fold_stored_hour(db, tenant, device, hour, keep=lambda d: start <= d["ts"] < end)
        before = builder.readings
        builder.add_folds(device, hour, folds, step)
        throttle.hour_read((hour, device), builder.readings - before)
        throttle(builder.readings)
    throttle(builder.readings, force=True)
    return builder.result(tenant)
