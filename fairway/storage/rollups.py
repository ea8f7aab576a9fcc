"""Rollups: per (tenant, device, stream, hour) count/min/max/sum per metric, in two
collections:

* ``rollups``: the hour's figures only (slim: a month chart reads 720 of them per
  stream), with read keys ``dk`` (device-day), ``mk`` (device-month) and ``tk``
  (tenant-day, for reports);
* ``rollup_minutes``: the same hour's figures per minute, in columns
  (``metrics.<m> = {m: [minute], n: [...], min: [...], max: [...], sum: [...]}``, the
  layout FerretDB decodes fastest), with ``dk``; read only for charts of a day or less.

An hour's figures may be split into **parts**, one per writer (the scheduler process
that stored the readings, whose id each reading carries in ``w``); readers merge the
parts of an hour. A part is only ever replaced by a fold of *as many or more* of its
writer's readings (:func:`store_parts`: insert, or update where the stored ``n`` is
smaller), so the two ways a part is written never undo each other:

* the scheduler folds the readings it has just inserted in memory and writes each
  part once its hour has closed (``scheduler/rollup_folder.py``): no reading is read back;
* :func:`roll_pending` recomputes the hours marked in ``rollup_pending`` (late data,
  redeliveries, a writer that died before writing its parts) from the raw readings
  (read by ``hk``), one part per writer found in them. A mark is removed only if its
  token did not change while the hour was computed.

Exact whatever the redeliveries: readings are stored once (``_id``), a writer folds only
the readings its insert actually stored, and any doubt (a duplicate, a late reading, a
lost process) hands the hour to the recomputation.

Raw readings are read in both layouts of ``telemetry`` (:mod:`fairway.kernel.batch_document`):
a device batch's document is expanded into its readings, each with the document's ``w``
and ``stream``, before it is folded or filtered.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

from fairway.kernel.batch_document import each_reading, with_batch_fields
from fairway.kernel.contract import hour_key
from fairway.storage import mongo, rollup_days
from fairway.storage.device_state import MAX_UPDATES_PER_BULK
from fairway.storage.mongo import ROLLUP_MINUTES, ROLLUP_PENDING, ROLLUPS
from fairway.storage.rollup_common import (
    Stats,
    day_key,
    merge_into,
    month_key,
    projection_of,
    store_newer,
    tenant_day_key,
)
from fairway.storage.telemetry import HOUR, floor_hour

DAY = timedelta(days=1)
# Hours this recent are folded from the raw readings when a chart finds no rollup for
# them: the open hour, the grace after it and one run of the rollup task.
LIVE_HOURS = 3
# Up to this span a chart reads hourly rollups day by day (``dk``); beyond, month by
# month (``mk``), which reads whole months but in one or two queries.
DAY_READS_UP_TO = timedelta(days=10)


def rollup_id(tenant: str, device: str, stream: str, hour: datetime, writer: str = "") -> str:
    """The ``_id`` shared by an hour's two rollup documents of one writer's part.

    Readings stored before writers were recorded (no ``w``) make the part ``""``.
    """
    rid = f"{tenant}:{device}:{stream}:{hour:%Y%m%d%H}"
    return f"{rid}/{writer}" if writer else rid


@dataclass(slots=True)
class HourFold:
    """One stream's readings of one device-hour, folded per hour and per minute."""

    n: int = 0
    metrics: dict[str, Stats] = field(default_factory=dict)
    minutes: dict[int, dict[str, Stats]] = field(default_factory=dict)

    def add(self, minute: int, values: dict[str, Any]) -> int:
        """Fold in one reading of minute ``minute``; the number of figures (metrics of
        the hour or of a minute) it added.

        The hour's figures and the minute's in one pass over ``values`` (every reading
        the scheduler stores passes here: a pass per accumulator repeated the type tests
        and the loop).
        """
        self.n += 1
        per_minute = self.minutes.get(minute)
        if per_minute is None:
            per_minute = self.minutes[minute] = {}
        hour = self.metrics
        added = 0
        for metric, value in values.items():
            kind = type(value)
            if (
                kind is not float
                and kind is not int
                and (kind is bool or not isinstance(value, int | float))
            ):
                continue  # strings and booleans have no min/max/sum
            # Comparisons, not min()/max() calls: the same result (the old value is kept
            # unless the new one is strictly beyond it), at half the cost on this hot path.
            for figures in (hour, per_minute):
                m = figures.get(metric)
                if m is None:
                    figures[metric] = {"n": 1, "min": value, "max": value, "sum": value}
                    added += 1
                else:
                    m["n"] += 1
                    if value < m["min"]:
                        m["min"] = value
                    if value > m["max"]:
                        m["max"] = value
                    m["sum"] += value
        return added

    def minute_columns(self) -> dict[str, dict[str, list[float]]]:
        """Per metric, the minutes that hold it and their figures, as columns."""
        columns: dict[str, dict[str, list[float]]] = {}
        for minute in sorted(self.minutes):
            for metric, s in self.minutes[minute].items():
                col = columns.setdefault(
                    metric, {"m": [], "n": [], "min": [], "max": [], "sum": []}
                )
                col["m"].append(minute)
                for k in ("n", "min", "max", "sum"):
                    col[k].append(s[k])
        return columns


def fold_readings(readings: Iterable[dict[str, Any]]) -> dict[str, HourFold]:
    """Raw readings of one device-hour folded per stream."""
    by_stream: dict[str, HourFold] = {}
    for doc in readings:
        fold = by_stream.get(doc["stream"])
        if fold is None:
            fold = by_stream[doc["stream"]] = HourFold()
        fold.add(doc["ts"].minute, doc["values"])
    return by_stream


def hour_documents(
    tenant: str, device: str, hour: datetime, folds: dict[str, HourFold], writer: str = ""
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Per stream, the ``rollups`` and the ``rollup_minutes`` document of one writer's
    part of a device-hour."""
    docs = []
    for stream, fold in sorted(folds.items()):
        key = {
            "_id": rollup_id(tenant, device, stream, hour, writer),
            "tenant": tenant,
            "device": device,
            "stream": stream,
            "hour": hour,
            "dk": day_key(tenant, device, hour),
        }
        if writer:
            key["w"] = writer
        hourly = {
            **key,
            "mk": month_key(tenant, device, hour),
            "tk": tenant_day_key(tenant, hour),
            "n": fold.n,
            "metrics": fold.metrics,
        }
        docs.append((hourly, {**key, "n": fold.n, "metrics": fold.minute_columns()}))
    return docs


def store_parts(db: Database, docs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Write parts (from :func:`hour_documents`), each unless a larger fold is stored."""
    # Minutes first: a chart that finds the hourly document may read its minutes.
    store_newer(db[ROLLUP_MINUTES], [m for _, m in docs])
    store_newer(db[ROLLUPS], [h for h, _ in docs])


def compute_hour(db: Database, tenant: str, device: str, hour: datetime) -> int:
    """Recompute and store the rollups of one device-hour; the number of parts."""
    return len(_store_hour(db, tenant, device, hour))


# What a fold reads of a stored reading (both layouts: with_batch_fields).
_FOLD_FIELDS = {"stream": 1, "ts": 1, "values": 1}
_WRITER_FIELDS = {**_FOLD_FIELDS, "w": 1}


def _fold_by_writer(
    db: Database, tenant: str, device: str, hour: datetime
) -> dict[str, dict[str, HourFold]]:
    stored = db[mongo.TELEMETRY].find(
        {"hk": hour_key(tenant, device, hour)}, with_batch_fields(_WRITER_FIELDS)
    )
    by_writer: dict[str, list[dict[str, Any]]] = {}
    for doc in each_reading(stored):  # a batch document's readings carry its w
        by_writer.setdefault(doc.get("w", ""), []).append(doc)
    return {w: fold_readings(docs) for w, docs in by_writer.items()}


def _store_hour(db: Database, tenant: str, device: str, hour: datetime) -> list[dict[str, Any]]:
    docs = [
        pair
        for writer, folds in sorted(_fold_by_writer(db, tenant, device, hour).items())
        for pair in hour_documents(tenant, device, hour, folds, writer)
    ]
    store_parts(db, docs)
    return [h for h, _ in docs]


def recompute_hour(db: Database, tenant: str, device: str, hour: datetime) -> int:
    """Replace the rollups of one device-hour after some of its readings were deleted
    (retention): its parts are deleted, then written again from the readings left.

    Only for hours no writer folds any more (older than any open hour): a part may
    shrink here, which :func:`store_parts` alone never allows.
    """
    # dk is the equality FerretDB pushes down; hour is filtered after it (at most 24 x
    # streams x writers documents read).
    hour_parts = {"dk": day_key(tenant, device, hour), "hour": hour}
    db[ROLLUPS].delete_many(hour_parts)
    db[ROLLUP_MINUTES].delete_many(hour_parts)
    parts = len(_store_hour(db, tenant, device, hour))
    rollup_days.compact_day(db, tenant, device, rollup_days.floor_day(hour), replace=True)
    return parts


def delete_day_before(db: Database, tenant: str, device: str, day: datetime, end: datetime) -> int:
    """Delete the device's rollups (both collections) of UTC ``day`` whose hour is < ``end``.

    One ``dk`` equality per collection: reads at most the day's documents.
    """
    query = {"dk": day_key(tenant, device, day), "hour": {"$lt": end}}
    # Hourly documents first: a chart that finds one may read its minutes.
    deleted = db[ROLLUPS].delete_many(query).deleted_count
    db[ROLLUP_MINUTES].delete_many(query)
    if end >= day + DAY:
        rollup_days.delete_day(db, tenant, device, day)
    else:  # the rest of the day stays: its day documents again, from what is left
        rollup_days.compact_day(db, tenant, device, day, replace=True)
    return deleted


def pending_marks(db: Database) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every ``rollup_pending`` mark, by (tenant, device). The collection holds only the
    hours not rolled up yet (the open ones, late data), so reading it whole is small."""
    marks: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for mark in db[ROLLUP_PENDING].find({}, {"tenant": 1, "device": 1, "hour": 1, "token": 1}):
        marks.setdefault((mark["tenant"], mark["device"]), []).append(mark)
    return marks


def unmark(db: Database, mark: dict[str, Any]) -> bool:
    """Delete ``mark`` if nobody re-marked its hour since it was read (same token)."""
    removed = db[ROLLUP_PENDING].delete_one({"_id": mark["_id"], "token": mark["token"]})
    return removed.deleted_count == 1


def mark_pending(db: Database, hours: Iterable[tuple[str, str, datetime]]) -> None:
    """Mark device-hours (tenant, device, hour start) for recomputation; raise on error.

    Each mark gets a new token, so a computation that read an older token knows the
    hour changed under it.
    """
    ops = [
        UpdateOne(
            {"_id": hour_key(tenant, device, hour)},
            {"$set": {"tenant": tenant, "device": device, "hour": hour, "token": uuid.uuid4().hex}},
            upsert=True,
        )
        for tenant, device, hour in hours
    ]
    for start in range(0, len(ops), MAX_UPDATES_PER_BULK):
        db[ROLLUP_PENDING].bulk_write(ops[start : start + MAX_UPDATES_PER_BULK], ordered=True)


def roll_pending(db: Database, now: datetime, grace: timedelta) -> dict[str, int]:
    """Recompute every marked hour that closed more than ``grace`` ago; unmark if unchanged."""
    computed = kept = 0
    for mark in list(db[ROLLUP_PENDING].find()):
        if mark["hour"] + HOUR + grace > now:
            continue  # still open (or within the grace): the sink may not re-mark it
        compute_hour(db, mark["tenant"], mark["device"], mark["hour"])
        # Before the mark goes: a compaction of the day may have read the old parts.
        rollup_days.recompact_if_begun(db, mark["tenant"], mark["device"], mark["hour"])
        computed += 1
        removed = db[ROLLUP_PENDING].delete_one({"_id": mark["_id"], "token": mark["token"]})
        kept += 1 - removed.deleted_count  # re-marked while computing: next run
    return {"computed": computed, "kept": kept}


def _days(start: datetime, end: datetime) -> Iterator[datetime]:
    day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    while day <= end:
        yield day
        day += DAY


def _months(start: datetime, end: datetime) -> Iterator[datetime]:
    month = start.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while month <= end:
        yield month
        month = (month + timedelta(days=32)).replace(day=1)


def _read(
    collection: Collection,
    keys: Iterable[dict[str, str]],
    stream: str | None,
    projection: dict[str, int] | None = None,
) -> Iterator[dict[str, Any]]:
    for key in keys:
        yield from collection.find({**key, "stream": stream} if stream else key, projection)


def live_hours(
    start: datetime, end: datetime, now: datetime, have: set[datetime]
) -> list[datetime]:
    """Hour starts in ``floor_hour(start)..min(end, now)`` recent enough to have no rollup
    yet (the last :data:`LIVE_HOURS`), except those in ``have``."""
    hours = []
    hour = max(floor_hour(start), floor_hour(now) - (LIVE_HOURS - 1) * HOUR)
    while hour <= min(end, now):
        if hour not in have:
            hours.append(hour)
        hour += HOUR
    return hours


def fold_stored_hour(
    db: Database,
    tenant: str,
    device: str,
    hour: datetime,
    stream: str | None = None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, HourFold]:
    """One device-hour's raw readings (read by ``hk``; those ``keep`` accepts) folded per stream."""
    query: dict[str, Any] = {"hk": hour_key(tenant, device, hour)}
    if stream:
        query["stream"] = stream
    readings = each_reading(db[mongo.TELEMETRY].find(query, with_batch_fields(_FOLD_FIELDS)))
    return fold_readings(readings if keep is None else filter(keep, readings))


def _live_folds(
    db: Database,
    tenant: str,
    device: str,
    start: datetime,
    end: datetime,
    now: datetime,
    have: set[datetime],
    stream: str | None,
) -> dict[datetime, dict[str, HourFold]]:
    """Recent hours without rollups yet (open, or in the grace), folded from raw readings."""
    return {
        hour: fold_stored_hour(db, tenant, device, hour, stream)
        for hour in live_hours(start, end, now, have)
    }


def hourly_series(
    db: Database,
    tenant: str,
    device: str,
    metric: str,
    start: datetime,
    end: datetime,
    stream: str | None = None,
    now: datetime | None = None,
) -> list[tuple[datetime, Stats]]:
    """Per hour ``(hour, {n, min, max, sum})`` of one metric, streams merged unless named.

    Hours with ``start <= hour <= end`` (hour starts): compacted days from their day
    documents (:mod:`fairway.storage.rollup_days`), other days from the hourly documents,
    and recent hours not rolled up yet folded from the raw readings (at most
    :data:`LIVE_HOURS`).
    """
    lo, hi = floor_hour(start), end
    covered, merged = rollup_days.read_hours(db, tenant, device, metric, lo, hi, stream)
    days = [d for d in _days(lo, hi) if d not in covered]
    keys: Iterable[dict[str, str]]
    if len(days) * DAY <= DAY_READS_UP_TO:
        keys = [{"dk": day_key(tenant, device, d)} for d in days]
    else:
        keys = [{"mk": month_key(tenant, device, m)} for m in _months(days[0], days[-1])]
    have = {d + h * HOUR for d in covered for h in range(24)}
    for roll in _read(db[ROLLUPS], keys, stream, projection_of(metric)):
        hour = roll["hour"]
        if lo <= hour <= hi and rollup_days.floor_day(hour) not in covered:
            have.add(hour)
            s = roll.get("metrics", {}).get(metric)
            if s is not None:
                merge_into(merged, hour, s)
    now = now or datetime.now(UTC)
    for hour, folds in _live_folds(db, tenant, device, lo, hi, now, have, stream).items():
        for fold in folds.values():
            if metric in fold.metrics:
                merge_into(merged, hour, fold.metrics[metric])
    return sorted(merged.items())


def minute_series(
    db: Database,
    tenant: str,
    device: str,
    metric: str,
    start: datetime,
    end: datetime,
    stream: str | None = None,
    now: datetime | None = None,
) -> list[tuple[datetime, Stats]]:
    """Per minute ``(minute, {n, min, max, sum})`` of one metric, streams merged unless named.

    Minutes with ``start <= minute start <= end``; recent hours not rolled up yet are
    folded from the raw readings (at most :data:`LIVE_HOURS`).
    """
    lo = floor_hour(start)
    merged: dict[datetime, Stats] = {}
    have: set[datetime] = set()
    keys = ({"dk": day_key(tenant, device, d)} for d in _days(lo, end))
    for roll in _read(db[ROLLUP_MINUTES], keys, stream, projection_of(metric)):
        hour = roll["hour"]
        if not lo <= hour <= end:
            continue
        have.add(hour)
        col = roll.get("metrics", {}).get(metric)
        if col is None:
            continue
        for i, minute in enumerate(col["m"]):
            at = hour + timedelta(minutes=minute)
            s = {k: col[k][i] for k in ("n", "min", "max", "sum")}
            merge_into(merged, at, s)
    now = now or datetime.now(UTC)
    for hour, folds in _live_folds(db, tenant, device, lo, end, now, have, stream).items():
        for fold in folds.values():
            for minute, stats in fold.minutes.items():
                if metric in stats:
                    merge_into(merged, hour + timedelta(minutes=minute), stats[metric])
    start_minute = start.astimezone(UTC).replace(second=0, microsecond=0)
    return sorted((t, s) for t, s in merged.items() if start_minute <= t <= end)
