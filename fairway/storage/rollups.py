"""``rollups``: per (tenant, device, stream, hour) count/min/max/sum per metric, for the
hour and each of its minutes, recomputed from the hour's raw readings (read by ``hk``).

Exact whatever the redeliveries: a rollup is never incremented, it is replaced by a
fold of the readings stored for that hour, and readings are stored once (``_id``).
Which hours need (re)computing is recorded in ``rollup_pending``: the scheduler's sink
marks ``<tenant>:<device>:<YYYYMMDDHH>`` after the readings are stored and before they
are acked; :func:`roll_pending` computes the closed hours and removes a mark only if its
token did not change while it computed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from fairway.kernel.contract import hour_key
from fairway.storage import mongo
from fairway.storage.device_state import MAX_UPDATES_PER_BULK
from fairway.storage.mongo import ROLLUP_PENDING, ROLLUPS

HOUR = timedelta(hours=1)


def day_key(tenant: str, device: str, day: datetime) -> str:
    """``dk``: a device's rollups of one UTC day (a month chart: ~30 equality reads)."""
    return f"{tenant}:{device}:{day.astimezone(UTC):%Y%m%d}"


def tenant_day_key(tenant: str, day: datetime) -> str:
    """``tk``: every rollup of a tenant for one UTC day (a one-day report)."""
    return f"{tenant}:{day.astimezone(UTC):%Y%m%d}"


def _add(acc: dict[str, dict[str, float]], values: dict[str, Any]) -> None:
    for metric, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # strings and booleans have no min/max/sum
        m = acc.get(metric)
        if m is None:
            acc[metric] = {"n": 1, "min": value, "max": value, "sum": value}
        else:
            m["n"] += 1
            m["min"] = min(m["min"], value)
            m["max"] = max(m["max"], value)
            m["sum"] += value


def fold_hour(
    tenant: str, device: str, hour: datetime, readings: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rollup documents (one per stream) of one device-hour from its raw readings."""
    by_stream: dict[str, dict[str, Any]] = {}
    for doc in readings:
        stream = doc["stream"]
        roll = by_stream.get(stream)
        if roll is None:
            roll = by_stream[stream] = {
                "_id": f"{tenant}:{device}:{stream}:{hour:%Y%m%d%H}",
                "tenant": tenant,
                "device": device,
                "stream": stream,
                "hour": hour,
                "dk": day_key(tenant, device, hour),
                "tk": tenant_day_key(tenant, hour),
                "n": 0,
                "metrics": {},
                "minutes": {},
            }
        roll["n"] += 1
        _add(roll["metrics"], doc["values"])
        _add(roll["minutes"].setdefault(f"{doc['ts'].minute:02d}", {}), doc["values"])
    return list(by_stream.values())


def compute_hour(db: Database, tenant: str, device: str, hour: datetime) -> int:
    """Recompute and store the rollups of one device-hour; the number of streams."""
    readings = db[mongo.TELEMETRY].find({"hk": hour_key(tenant, device, hour)})
    rolls = fold_hour(tenant, device, hour, readings)
    ops = [
        UpdateOne({"_id": r.pop("_id")}, {"$set": r}, upsert=True)  # _id is immutable
        for r in rolls
    ]
    for start in range(0, len(ops), MAX_UPDATES_PER_BULK):
        db[ROLLUPS].bulk_write(ops[start : start + MAX_UPDATES_PER_BULK], ordered=True)
    return len(rolls)


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
        computed += 1
        removed = db[ROLLUP_PENDING].delete_one({"_id": mark["_id"], "token": mark["token"]})
        kept += 1 - removed.deleted_count  # re-marked while computing: next run
    return {"computed": computed, "kept": kept}


def hours_of_device(
    db: Database, tenant: str, device: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """A device's rollups with ``start <= hour <= end``, oldest first, read day by day."""
    found: list[dict[str, Any]] = []
    day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    while day <= end:
        found += db[ROLLUPS].find({"dk": day_key(tenant, device, day)})
        day += timedelta(days=1)
    return sorted(
        (r for r in found if start <= r["hour"] + HOUR and r["hour"] <= end),
        key=lambda r: (r["hour"], r["stream"]),
    )


def hourly_series(
    db: Database,
    tenant: str,
    device: str,
    metric: str,
    start: datetime,
    end: datetime,
    stream: str | None = None,
) -> list[dict[str, Any]]:
    """Per hour ``{hour, n, min, max, sum}`` of one metric (streams merged unless named)."""
    merged: dict[datetime, dict[str, Any]] = {}
    for roll in hours_of_device(db, tenant, device, start, end):
        if stream is not None and roll["stream"] != stream:
            continue
        m = roll["metrics"].get(metric)
        if m is None:
            continue
        point = merged.get(roll["hour"])
        if point is None:
            merged[roll["hour"]] = {"hour": roll["hour"], **m}
        else:
            point["n"] += m["n"]
            point["min"] = min(point["min"], m["min"])
            point["max"] = max(point["max"], m["max"])
            point["sum"] += m["sum"]
    return [merged[h] for h in sorted(merged)]
