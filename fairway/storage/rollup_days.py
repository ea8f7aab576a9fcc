"""Day columns: a device-stream-day's hourly rollups in one document, for long charts.

A month chart from the hourly documents reads ~1,500 of them (both streams), and
FerretDB spends ~0.15 ms of server CPU decoding each. ``rollup_days`` holds the same
figures per device, stream and UTC day::

    {_id: "<tenant>:<device>:<stream>:<YYYYMMDD>", tenant, device, stream, day, dk, mk,
     n, metrics: {<metric>: Binary}}

each metric's hours packed as little-endian float64 records ``(hour, n, min, max, sum)``
(:func:`pack`): FerretDB decodes one binary field per metric instead of ~100 typed
values, so a 30-day chart reads ~60 small documents (probe: 248 of them in 18 ms, against
1,488 hourly documents in 195 ms). Figures are float64 here (exact for counts and for
integers up to 2**53).

``n`` is the day's readings (the sum of its hourly parts' ``n``). Parts only ever grow
(:func:`fairway.storage.rollups.store_parts`), so ``n`` does too, and a day document is
replaced only by one folding more (:func:`fairway.storage.rollup_common.store_newer`): two
compactions of one day, racing or redelivered, leave the one that saw the most, and
the last compaction after the last change of a part sees every part.

**Which days are compacted**, per tenant (``rollup_compaction``: ``{_id: tenant, from,
upto, started_from, started_upto}``): days in ``[from, upto)`` have their day documents
(a day without one had no readings); readers trust only that window and read the hourly
documents for every other day (the recent ones, and older ones not migrated yet).
:func:`compact` (the rollup task, every minute) moves ``upto`` forward one closed day at
a time (a day is compacted :data:`COMPACT_AFTER` after it ends, and only when none of the
tenant's hours up to it is pending or held by a live writer), then ``from`` backward to
the tenant's oldest reading (migrating data written before this layout). It first
widens ``started_*``, compacts, then moves ``from``/``upto``: a recomputation of a closed
hour (:func:`fairway.storage.rollups.roll_pending`, retention) reads ``started_*`` after
it wrote its parts and compacts the day again if the window holds it, so no compaction
misses a change.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Binary
from pymongo.database import Database

from fairway.storage import rollup_common
from fairway.storage.mongo import (
    DEVICE_STATE,
    ROLLUP_COMPACTION,
    ROLLUP_DAYS,
    ROLLUP_PENDING,
    ROLLUP_TOUCHED,
    ROLLUPS,
    TENANTS,
)

DAY = timedelta(days=1)
# A day is compacted this long after it ends: past the scheduler's longest flush grace
# (1 h), so its writers have written their parts or recorded that they hold some.
COMPACT_AFTER = timedelta(hours=2)
# Tenant-days compacted per run of the rollup task (each reads every device's day).
DAYS_PER_RUN = 8
STORE_BATCH = 500  # day documents per insert
_RECORD = struct.Struct("<5d")

Stats = rollup_common.Stats


def floor_day(ts: datetime) -> datetime:
    """The UTC day ``ts`` falls in."""
    return ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def day_id(tenant: str, device: str, stream: str, day: datetime) -> str:
    """A day document's ``_id``."""
    return f"{tenant}:{device}:{stream}:{day:%Y%m%d}"


def pack(points: Iterable[tuple[int, Stats]]) -> Binary:
    """Hours (0-23) and their figures as little-endian float64 records."""
    return Binary(
        b"".join(_RECORD.pack(h, s["n"], s["min"], s["max"], s["sum"]) for h, s in points)
    )


def unpack(blob: bytes) -> list[tuple[int, Stats]]:
    """The inverse of :func:`pack`."""
    return [
        (int(h), {"n": int(n), "min": lo, "max": hi, "sum": total})
        for h, n, lo, hi, total in _RECORD.iter_unpack(blob)
    ]


def day_documents(
    tenant: str, device: str, day: datetime, parts: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The day documents (one per stream) of a device-day's hourly parts (any writers)."""
    streams: dict[str, tuple[list[int], dict[str, dict[int, Stats]]]] = {}
    for part in parts:
        total, metrics = streams.setdefault(part["stream"], ([0], {}))
        total[0] += part["n"]
        hour = part["hour"].astimezone(UTC).hour
        for metric, s in part.get("metrics", {}).items():
            hours = metrics.setdefault(metric, {})
            point = hours.get(hour)
            if point is None:
                hours[hour] = {k: s[k] for k in ("n", "min", "max", "sum")}
            else:
                rollup_common.merge_stats(point, s)
    return [
        {
            "_id": day_id(tenant, device, stream, day),
            "tenant": tenant,
            "device": device,
            "stream": stream,
            "day": day,
            "dk": rollup_common.day_key(tenant, device, day),
            "mk": rollup_common.month_key(tenant, device, day),
            "n": total[0],
            "metrics": {m: pack(sorted(hours.items())) for m, hours in metrics.items()},
        }
        for stream, (total, metrics) in sorted(streams.items())
    ]


def compact_day(
    db: Database, tenant: str, device: str, day: datetime, replace: bool = False
) -> int:
    """Write a device-day's day documents from its hourly parts; how many.

    ``replace``: delete the day's documents first (retention shrank the day's parts;
    otherwise a document is only replaced by one folding more readings).
    """
    key = rollup_common.day_key(tenant, device, day)
    parts = db[ROLLUPS].find({"dk": key}, {"_id": 0, "stream": 1, "hour": 1, "n": 1, "metrics": 1})
    docs = day_documents(tenant, device, day, parts)
    if replace:
        db[ROLLUP_DAYS].delete_many({"dk": key})
    rollup_common.store_newer(db[ROLLUP_DAYS], docs)
    return len(docs)


def delete_day(db: Database, tenant: str, device: str, day: datetime) -> None:
    """Delete a device-day's day documents (retention removed the whole day)."""
    db[ROLLUP_DAYS].delete_many({"dk": rollup_common.day_key(tenant, device, day)})


@dataclass(frozen=True, slots=True)
class Window:
    """A tenant's compacted days: ``[start, end)`` done, ``[started_from, started_upto)``
    begun (a superset)."""

    start: datetime
    end: datetime
    started_from: datetime
    started_upto: datetime
    migrated: bool = False

    def holds(self, day: datetime) -> bool:
        """Whether ``day``'s day documents are complete (readers may trust them)."""
        return self.start <= day < self.end

    def begun(self, day: datetime) -> bool:
        """Whether a compaction of ``day`` may have run (a change must compact it again)."""
        return self.started_from <= day < self.started_upto


def window(db: Database, tenant: str) -> Window | None:
    """The tenant's compaction window, or None if compaction has not started for it."""
    doc = db[ROLLUP_COMPACTION].find_one({"_id": tenant})
    if doc is None:
        return None
    migrated = doc.get("migrated", False)
    return Window(doc["from"], doc["upto"], doc["started_from"], doc["started_upto"], migrated)


def recompact_if_begun(db: Database, tenant: str, device: str, hour: datetime) -> bool:
    """After a closed hour's parts changed: compact its day again if a compaction may
    have read it already (the window is read after the change); whether it did."""
    day = floor_day(hour)
    found = window(db, tenant)
    if found is None or not found.begun(day):
        return False
    compact_day(db, tenant, device, day)
    return True


def _blocked(db: Database) -> dict[str, datetime]:
    """Per tenant, the first day with an hour still pending or held by a writer."""
    blocked: dict[str, datetime] = {}

    def block(tenant: str, hour: datetime) -> None:
        day = floor_day(hour)
        if tenant not in blocked or day < blocked[tenant]:
            blocked[tenant] = day

    for mark in db[ROLLUP_PENDING].find({}, {"tenant": 1, "hour": 1}):
        block(mark["tenant"], mark["hour"])
    for record in db[ROLLUP_TOUCHED].find({}, {"tenants": 1, "hour": 1}):
        for tenant in set(record["tenants"]):
            block(tenant, record["hour"])
    return blocked


def _compact_tenant_day(db: Database, tenant: str, day: datetime) -> int:
    """Every device's day documents of a tenant-day, from one read of its hourly parts
    (by ``tk``: no read per device, none for devices without readings that day)."""
    by_device: dict[str, list[dict[str, Any]]] = {}
    projection = {"_id": 0, "device": 1, "stream": 1, "hour": 1, "n": 1, "metrics": 1}
    for part in db[ROLLUPS].find({"tk": rollup_common.tenant_day_key(tenant, day)}, projection):
        by_device.setdefault(part["device"], []).append(part)
    docs = [
        doc
        for device, parts in sorted(by_device.items())
        for doc in day_documents(tenant, device, day, parts)
    ]
    for start in range(0, len(docs), STORE_BATCH):
        rollup_common.store_newer(db[ROLLUP_DAYS], docs[start : start + STORE_BATCH])
    return len(docs)


def _oldest_day(db: Database, tenant: str) -> datetime | None:
    firsts = [
        s["first_ts"]
        for s in db[DEVICE_STATE].find({"tenant": tenant}, {"first_ts": 1})
        if s.get("first_ts") is not None
    ]
    return floor_day(min(firsts)) if firsts else None


def compact(db: Database, now: datetime, max_days: int = DAYS_PER_RUN) -> dict[str, int]:
    """Compact up to ``max_days`` tenant-days: closed days forward, then older days
    backward (migration) down to each tenant's oldest reading."""
    last = floor_day(now - COMPACT_AFTER) - DAY  # the newest day that may be compacted
    blocked = _blocked(db)
    states = db[ROLLUP_COMPACTION]
    tenants = sorted(t["_id"] for t in db[TENANTS].find({}, {"_id": 1}))
    windows: dict[str, Window] = {}
    for tenant in tenants:
        found = window(db, tenant)
        if found is None:
            edge = last + DAY
            start = {"from": edge, "upto": edge, "started_from": edge, "started_upto": edge}
            # $setOnInsert: a concurrent run may have created it first.
            states.update_one({"_id": tenant}, {"$setOnInsert": start}, upsert=True)
            found = window(db, tenant)
        assert found is not None
        windows[tenant] = found
    done = forward = backward = docs = 0
    for tenant in tenants:
        day = windows[tenant].end
        stop = min(last + DAY, blocked.get(tenant, last + DAY))
        while day < stop and done < max_days:
            states.update_one({"_id": tenant}, {"$max": {"started_upto": day + DAY}})
            docs += _compact_tenant_day(db, tenant, day)
            states.update_one({"_id": tenant}, {"$max": {"upto": day + DAY}})
            day += DAY
            done += 1
            forward += 1
    for tenant in tenants:
        if windows[tenant].migrated or done >= max_days:
            continue
        oldest = _oldest_day(db, tenant)
        day = windows[tenant].start - DAY
        stop = blocked.get(tenant, last + DAY)
        while oldest is not None and oldest <= day < stop and done < max_days:
            states.update_one({"_id": tenant}, {"$min": {"started_from": day}})
            docs += _compact_tenant_day(db, tenant, day)
            states.update_one({"_id": tenant}, {"$min": {"from": day}})
            day -= DAY
            done += 1
            backward += 1
        if oldest is None or day < oldest:
            states.update_one({"_id": tenant}, {"$set": {"migrated": True}})
    return {"days_compacted": forward, "days_migrated": backward, "day_documents": docs}


def read_hours(
    db: Database,
    tenant: str,
    device: str,
    metric: str,
    lo: datetime,
    hi: datetime,
    stream: str | None = None,
) -> tuple[set[datetime], dict[datetime, Stats]]:
    """The compacted days in ``lo..hi`` (day starts) and their hours' figures of
    ``metric`` with ``lo <= hour <= hi``, streams merged unless named."""
    found = window(db, tenant)
    if found is None:
        return set(), {}
    covered: set[datetime] = set()
    day = floor_day(lo)
    while day <= hi:
        if found.holds(day):
            covered.add(day)
        day += DAY
    merged: dict[datetime, Stats] = {}
    if not covered:
        return covered, merged
    months = sorted({rollup_common.month_key(tenant, device, d) for d in covered})
    projection = rollup_common.projection_of(metric, "day")
    for mk in months:
        query: dict[str, Any] = {"mk": mk, "stream": stream} if stream else {"mk": mk}
        for doc in db[ROLLUP_DAYS].find(query, projection):
            day = doc["day"]
            blob = doc.get("metrics", {}).get(metric)
            if day not in covered or blob is None:
                continue
            for h, s in unpack(blob):
                hour = day + timedelta(hours=h)
                if lo <= hour <= hi:
                    rollup_common.merge_into(merged, hour, s)
    return covered, merged
