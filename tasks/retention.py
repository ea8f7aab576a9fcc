"""Retention: delete readings older than their tenant's plan allows, and expired jobs.

A tenant's plan sets ``retention_days`` on its tenant document; tenants without one
keep ``default_retention_days``. Readings are deleted by device time (``ts``), *bucket
by bucket*: FerretDB 1.24 pushes down only top-level equalities, so a range such as
``{tenant, ts: {$lt: cutoff}}`` would read every reading of the tenant (and on SQLite
fail past 32,766 matches). Instead, for each device with readings (``device_state``,
read by ``tenant``) the hours from its ``first_ts`` up to the cutoff are deleted one by
one by hour key:

* a whole hour before the cutoff's hour: ``delete_many({hk})``;
* the hour holding the cutoff: ``delete_many({hk, ts: {$lt: cutoff}})`` (the range is
  filtered among that hour's readings only), and its rollups are recomputed from what
  is left (:func:`fairway.storage.rollups.recompute_hour`);
* then the rollups and per-minute rollups of the deleted hours (by ``dk``, a day at a
  time), their ``rollup_pending`` marks (by ``_id``, only if not re-marked since), and
  last ``device_state.first_ts`` is moved up (:func:`device_state.advance_first`).

The rule for ``first_ts``: once every reading before an hour ``h`` is deleted,
``first_ts`` becomes ``h``; once the cutoff's hour is done too, it becomes the cutoff
(``>= cutoff``; a lower bound of the readings kept, which is all history needs: it
walks from ``floor_hour(first_ts)``), or it is removed if ``last_ts`` is before the
cutoff (no reading left: history shows none). ``first_ts`` moves only after what lies
below it is deleted, so a run killed anywhere leaves ``first_ts`` at or below every
reading still stored, and the next run (or the redelivered one) deletes what is left.
The move is conditional on ``first_ts`` being unchanged: a late reading folded in
meanwhile moved it down, and the next run walks those hours again.

Work per run is bounded: at most ``max_hours`` device-hours (``FAIRWAY_RETENTION_MAX_HOURS``),
shared max-min fairly among the devices that have expired hours (the leftover, oldest
``first_ts`` first), so a first run over a year of data does not hold the maintenance
worker for hours; the runs that follow continue where ``first_ts`` now stands. The
result says how many device-hours were left for later (``hours_left``). In steady state
a run needs about two device-hours per device (the hour that became whole and the new
cutoff's hour), so ``max_hours`` must exceed twice the devices with readings.

Device batches stored as one document per batch and hour
(:mod:`fairway.kernel.batch_document`) are deleted whole: such a document's ``ts`` is its
latest reading's, so the cutoff hour's ``ts < cutoff`` deletes it only once *every* one
of its readings is before the cutoff. A batch straddling the cutoff is kept whole until
a later run (its older readings outlive the plan by less than the batch's span, never
the other way round); whole hours before the cutoff's go entirely, as before. Its
readings before the cutoff then lie below ``first_ts`` but in ``first_ts``'s hour, which
is all history, ranges and the next run read by (``floor_hour(first_ts)``). The result
counts stored *documents* (``documents_deleted``), not readings: a batch document counts
once, whatever its readings. Counting readings would mean reading each document's ``r``
before deleting it, which cost FerretDB 1.6 to 1.9 times the delete's own CPU (an hour
of 360 ten-reading batch documents: 130-200 ms to delete, 240-320 ms more to read first;
docs/architecture.md, "Retention").

Readings stored before ``hk`` existed have no hour key, so this never finds them: run
``fairway migrate backfill-hk`` once (:mod:`fairway.storage.backfill`), which gives
them ``hk`` and folds them into ``device_state``; retention then removes them in time.
A hard limit on FerretDB (SQLite) remains: a delete matching more than 32,766 readings
is refused ("too many SQL variables"), so a refused delete of one hour is split in
halves of that hour, recursively (an hour of one device rarely comes near it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import OperationFailure

import tasks.export as export
from fairway.kernel.contract import hour_key
from fairway.storage import device_state, job_records, rollups
from fairway.storage.mongo import TELEMETRY, TENANTS
from fairway.storage.telemetry import HOUR, floor_hour

Progress = Callable[[int, int], None]
MAX_SPLITS = 40  # halvings of a time range: far below a millisecond of a century
PROGRESS_EVERY_S = 0.5  # least time between two progress updates
DAY = timedelta(days=1)
_MS = timedelta(milliseconds=1)


def _too_many_matches(exc: OperationFailure) -> bool:
    return "too many SQL variables" in str(exc)


def delete_hour(db: Database, hk: str, before: datetime | None = None) -> int:
    """Delete the documents of hour key ``hk`` (only those with ``ts < before`` if given);
    the number of documents deleted. A batch document's ``ts`` is its latest reading's:
    with ``before`` it goes only once all its readings are before it."""
    query: dict[str, Any] = {"hk": hk}
    if before is not None:
        query["ts"] = {"$lt": before}
    try:
        return db[TELEMETRY].delete_many(query).deleted_count
    except OperationFailure as exc:
        if not _too_many_matches(exc):
            raise
    times = [d["ts"] for d in db[TELEMETRY].find(query, {"_id": 0, "ts": 1})]
    if not times:
        return 0
    return _delete_range(db, hk, min(times), max(times) + _MS, 0)


def _delete_range(db: Database, hk: str, lo: datetime, hi: datetime, depth: int) -> int:
    """Delete readings of ``hk`` in ``[lo, hi)``, halving the range while the database refuses."""
    if lo >= hi:
        return 0
    query = {"hk": hk, "ts": {"$gte": lo, "$lt": hi}}
    try:
        return db[TELEMETRY].delete_many(query).deleted_count
    except OperationFailure as exc:
        if not _too_many_matches(exc) or depth >= MAX_SPLITS:
            raise
    mid = lo + (hi - lo) / 2
    return _delete_range(db, hk, lo, mid, depth + 1) + _delete_range(db, hk, mid, hi, depth + 1)


def retention_days(tenant_doc: dict[str, Any], default_days: int) -> int:
    """The tenant plan's retention in days (at least 1), else the default."""
    days = tenant_doc.get("retention_days")
    if isinstance(days, int | float) and not isinstance(days, bool) and days >= 1:
        return int(days)
    return default_days


def hours_to_walk(first_ts: datetime, cutoff: datetime) -> int:
    """Device-hours retention visits for readings from ``first_ts`` and this cutoff: the
    whole hours before the cutoff's hour, and that hour if the cutoff is inside it."""
    if first_ts >= cutoff:
        return 0
    whole = (floor_hour(cutoff) - floor_hour(first_ts)) // HOUR
    return whole + (1 if cutoff > floor_hour(cutoff) else 0)


def fair_shares(needs: Sequence[int], budget: int, order: Sequence[int]) -> list[int]:
    """Split ``budget`` among ``needs`` max-min fairly (each gets ``min(need, level)``);
    what integer division leaves goes one each in ``order`` (indices) to those short."""
    shares = [0] * len(needs)
    left = budget
    by_need = sorted(range(len(needs)), key=needs.__getitem__)
    for pos, i in enumerate(by_need):
        level = left // (len(needs) - pos)
        if needs[i] > level:  # this one and every larger need get the level
            for j in by_need[pos:]:
                shares[j] = level
            left -= level * (len(needs) - pos)
            break
        shares[i] = needs[i]
        left -= needs[i]
    for i in order:
        if left == 0:
            break
        if shares[i] < needs[i]:
            shares[i] += 1
            left -= 1
    return shares


@dataclass(slots=True)
class Device:
    """A device with expired hours, and what this run may do for it."""

    tenant: str
    id: str
    first_ts: datetime
    last_ts: datetime | None
    cutoff: datetime
    hours: int = 0  # this run's share
    marks: list[dict[str, Any]] = field(default_factory=list)


class _Throttle:
    """``progress(done, total)`` at most every ``PROGRESS_EVERY_S``, and when forced."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total, self.next_at = progress, total, 0.0

    def __call__(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self.next_at:
            self.next_at = now + PROGRESS_EVERY_S
            self.progress(done, self.total)


def _unmark_before(db: Database, device: Device, end: datetime) -> None:
    """Delete the device's rollup marks of hours before ``end`` (deleted hours)."""
    kept = []
    for mark in device.marks:
        if mark["hour"] < end:
            rollups.unmark(db, mark)  # re-marked since: late data, its rollup is computed
        else:
            kept.append(mark)
    device.marks = kept


def _advance(db: Database, device: Device, first_ts: datetime | None) -> bool:
    """Move the device's ``first_ts`` to ``first_ts``; False if it changed under us."""
    if not device_state.advance_first(db, device.id, device.first_ts, first_ts):
        return False
    if first_ts is not None:
        device.first_ts = first_ts
    return True


def expire_device(db: Database, device: Device, step: Callable[[], None]) -> int:
    """Delete up to ``device.hours`` of the device's expired hours, oldest first; the
    number of stored documents deleted (a batch document counts once). ``step()`` is
    called after each hour."""
    tenant, cutoff = device.tenant, device.cutoff
    cut_hour = floor_hour(cutoff)
    hour, left, deleted = floor_hour(device.first_ts), device.hours, 0
    while left > 0 and hour < cut_hour:
        # One UTC day (or less) at a time: its rollups go in one dk delete, then first_ts.
        day = hour.replace(hour=0)
        end = min(day + DAY, cut_hour, hour + left * HOUR)
        while hour < end:
            deleted += delete_hour(db, hour_key(tenant, device.id, hour))
            hour += HOUR
            left -= 1
            step()
        rollups.delete_day_before(db, tenant, device.id, day, end)
        _unmark_before(db, device, end)
        if not _advance(db, device, end):
            return deleted
    if hour < cut_hour:
        return deleted  # the rest is the next run's
    if cutoff > cut_hour:
        if left == 0:
            return deleted
        deleted += delete_hour(db, hour_key(tenant, device.id, cut_hour), before=cutoff)
        rollups.recompute_hour(db, tenant, device.id, cut_hour)
        step()
    has_readings = device.last_ts is not None and device.last_ts >= cutoff
    _advance(db, device, cutoff if has_readings else None)
    return deleted


def expired_devices(
    db: Database, default_days: int, now: datetime
) -> tuple[list[Device], dict[str, int]]:
    """Devices of every tenant with readings older than the tenant's plan, and each
    tenant's count of them (tenants in ``_id`` order, each device's cutoff set)."""
    tenants = list(db[TENANTS].find({}, {"retention_days": 1}).sort("_id", 1))
    devices: list[Device] = []
    per_tenant: dict[str, int] = {}
    for doc in tenants:
        tenant = doc["_id"]
        cutoff = now - timedelta(days=retention_days(doc, default_days))
        states = device_state.of_tenant(db, tenant, ("first_ts", "last_ts"))
        per_tenant[tenant] = 0
        for device_id, state in sorted(states.items()):
            first = state.get("first_ts")
            if first is not None and first < cutoff:
                devices.append(Device(tenant, device_id, first, state.get("last_ts"), cutoff))
                per_tenant[tenant] += 1
    return devices, per_tenant


def expire_readings(
    db: Database, default_days: int, now: datetime, max_hours: int, progress: Progress
) -> dict[str, Any]:
    """Delete readings past each tenant's plan, at most ``max_hours`` device-hours;
    ``documents_deleted`` counts stored documents per tenant (a batch document once,
    whatever its readings)."""
    devices, per_tenant = expired_devices(db, default_days, now)
    needs = [hours_to_walk(d.first_ts, d.cutoff) for d in devices]
    oldest_first = sorted(range(len(devices)), key=lambda i: devices[i].first_ts)
    shares = fair_shares(needs, max_hours, oldest_first)
    for device, share in zip(devices, shares, strict=True):
        device.hours = share
    marks = rollups.pending_marks(db) if devices else {}
    deleted = dict.fromkeys(per_tenant, 0)
    total = sum(d.hours for d in devices)
    throttle, done = _Throttle(progress, total), 0
    throttle(0, force=True)

    def step() -> None:
        nonlocal done
        done += 1
        throttle(done)

    for device in devices:
        if device.hours == 0:
            continue
        device.marks = marks.get((device.tenant, device.id), [])
        deleted[device.tenant] += expire_device(db, device, step)
    throttle(done, force=True)
    return {
        "documents_deleted": deleted,
        "hours_deleted": done,
        "hours_left": sum(needs) - done,
        "devices_behind": sum(1 for need, share in zip(needs, shares, strict=True) if share < need),
    }


def apply_retention(
    db: Database,
    default_days: int,
    job_ttl_s: float,
    now: datetime,
    progress: Progress,
    max_hours: int,
) -> dict[str, Any]:
    """Delete old readings per tenant plan (at most ``max_hours`` device-hours), then
    expired job records and their export files."""
    readings = expire_readings(db, default_days, now, max_hours, progress)
    expired = job_records.expired_jobs(db, now - timedelta(seconds=job_ttl_s))
    for job_id in expired:
        export.delete_file(db, job_id)
    job_records.delete_jobs(db, expired)
    return {"at": now.astimezone(UTC).isoformat(), **readings, "jobs_expired": len(expired)}
