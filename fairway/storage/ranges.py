"""The device-hours of a tenant's (or one device's) time range, found without a scan.

FerretDB 1.24 pushes down only top-level equalities, so ``{tenant, ts: {$gte, $lt}}``
reads every reading the tenant ever stored. Reports and exports instead *plan* a range
from what the pipeline maintains, one equality read at a time, then read each planned
device-hour by ``hk``:

1. ``rollup_pending`` marks of the tenant (a small collection): hours not rolled up yet,
   the open hour included, and closed hours whose rollup is stale (late data);
2. ``rollups`` by ``tk`` (tenant-day), one read per UTC day, or by ``dk`` (device-day)
   for one device: the rolled device-hours with their reading counts ``n``;
3. ``device_state`` (first/last reading per device): for the last
   :data:`fairway.storage.rollups.LIVE_HOURS`, the hours of devices that reported then
   and are neither rolled nor marked (readings stored by a path that does not mark).

Marks are read *before* rollups: the rollup task writes an hour's rollup before it
removes the hour's mark, so an hour rolled between the two reads is seen in its rollup.
(Read the other way round, it could be missed by both.) Readings stored after the plan
was made may be left out, as with any snapshot.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database

from fairway.storage import device_state, rollups
from fairway.storage.mongo import ROLLUP_MINUTES, ROLLUP_PENDING, ROLLUPS
from fairway.storage.telemetry import HOUR, floor_hour

DeviceHour = tuple[datetime, str]  # (hour start, device): sorts hour first
_JUST_BEFORE = timedelta(milliseconds=1)  # BSON dates have millisecond precision


def _days(first: datetime, last: datetime) -> Iterator[datetime]:
    day = first.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    while day <= last:
        yield day
        day += rollups.DAY


@dataclass(slots=True)
class RangePlan:
    """The device-hours that may hold readings in ``[start, end)``, and their rollup counts."""

    tenant: str
    start: datetime
    end: datetime
    counts: dict[DeviceHour, int] = field(default_factory=dict)  # rollup n, streams summed
    pending: set[DeviceHour] = field(default_factory=set)  # marked: rollup absent or stale
    live: set[DeviceHour] = field(default_factory=set)  # recent, neither rolled nor marked

    def device_hours(self) -> list[DeviceHour]:
        """Every planned device-hour, oldest hour first, then by device."""
        return sorted(self.counts.keys() | self.pending | self.live)

    def current(self, dh: DeviceHour) -> bool:
        """True if the device-hour's rollup holds every reading stored for it (no mark)."""
        return dh in self.counts and dh not in self.pending

    def whole(self, hour: datetime) -> bool:
        """True if the whole hour lies inside the range."""
        return self.start <= hour and hour + HOUR <= self.end

    def estimate(self, dh: DeviceHour) -> int:
        """Readings expected in the device-hour before it is read: its rollup count (the
        whole hour's, also for a first or last hour partly outside the range: an upper
        bound, so a correction only moves progress forward), 0 without a rollup."""
        return self.counts.get(dh, 0)

    def estimated_total(self) -> int:
        """The sum of :meth:`estimate` over the plan (a progress total before reading)."""
        return sum(self.counts.values())

    def counted_at_least(self) -> int:
        """Readings the rollups already count in hours wholly inside the range."""
        return sum(n for (hour, _), n in self.counts.items() if self.whole(hour))


def plan_range(
    db: Database,
    tenant: str,
    device: str | None,
    start: datetime,
    end: datetime,
    now: datetime,
    fields: Iterable[str] = (),
    each_current: Callable[[dict[str, Any]], None] | None = None,
) -> RangePlan:
    """Plan ``[start, end)`` of a tenant (or of one of its devices) from marks, rollups and
    device state; ``each_current`` gets every hourly rollup of a planned, unmarked hour
    (with ``device``, ``hour``, ``n`` and ``fields``)."""
    plan = RangePlan(tenant, start, end)
    first, last = floor_hour(start), end - _JUST_BEFORE
    scope = {"tenant": tenant} if device is None else {"tenant": tenant, "device": device}
    for mark in db[ROLLUP_PENDING].find(scope, {"device": 1, "hour": 1}):
        if first <= mark["hour"] <= last:
            plan.pending.add((mark["hour"], sys.intern(mark["device"])))
    projection = dict.fromkeys(("device", "hour", "n", *fields), 1)
    for day in _days(first, last):
        if device is None:
            key = {"tk": rollups.tenant_day_key(tenant, day)}
        else:
            key = {"dk": rollups.day_key(tenant, device, day)}
        for roll in db[ROLLUPS].find(key, projection):
            if not first <= roll["hour"] <= last:
                continue
            dh = (roll["hour"], sys.intern(roll["device"]))
            plan.counts[dh] = plan.counts.get(dh, 0) + roll["n"]
            if each_current is not None and dh not in plan.pending:
                each_current(roll)
    if device is None:
        states: Iterable[dict[str, Any] | None] = device_state.of_tenant(db, tenant).values()
    else:
        states = [device_state.get(db, device)]
    for state in states:
        if state is None or state.get("tenant") != tenant or "last_ts" not in state:
            continue
        lo, hi = max(start, state["first_ts"]), min(last, state["last_ts"])
        if lo > hi:
            continue
        name = sys.intern(state["_id"])
        for hour in rollups.live_hours(lo, hi, now, set()):
            if (hour, name) not in plan.counts and (hour, name) not in plan.pending:
                plan.live.add((hour, name))
    return plan


def minute_rollups(db: Database, tenant: str, device: str, day: datetime) -> list[dict[str, Any]]:
    """A device's ``rollup_minutes`` documents of one UTC day (read by ``dk``)."""
    return list(db[ROLLUP_MINUTES].find({"dk": rollups.day_key(tenant, device, day)}))
