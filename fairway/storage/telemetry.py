"""Reads of ``telemetry`` whose cost is bounded by what they return.

A device's history is read one hour at a time by equality on the hour key ``hk``
(``fairway.kernel.contract.hour_key``), newest hour first, each hour sorted here by
``(ts, _id)`` descending. The walk starts at the newest bound (``to``, the cursor, or
the device's last hour from ``device_state``) and stops when the page is full, at
``from``, at the device's first hour, or after ``max_probes`` hours; then the page
carries a cursor that continues below the last hour probed. So a request costs at
most ``max_probes`` equality reads plus the readings of the hours it returns from,
whatever is stored.

Both layouts of ``telemetry`` are read (:mod:`fairway.kernel.batch_document`): an hour's
documents are expanded into readings before they are filtered and sorted, so a reading
stored in a device batch's document pages, filters and carries a cursor (its ``_id``
``<tenant>:<device>:<batch id>#<index>``) exactly as one stored alone. A batch document
matches the ``stream`` filter as a whole (``stream`` is shared); ``from``/``to`` and the
cursor apply to each of its readings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database

from fairway.kernel.batch_document import each_reading, with_batch_fields
from fairway.kernel.contract import hour_key
from fairway.kernel.times import iso_z
from fairway.storage import device_state, mongo

# One week of hours: the most equality reads one history request makes.
MAX_HOUR_PROBES = 168
HOUR = timedelta(hours=1)
_JUST_BEFORE = timedelta(milliseconds=1)  # BSON dates have millisecond precision


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position in (ts, _id) descending order: the next page holds what sorts after it.

    An empty ``id`` means "everything strictly before ``ts``" (the cursor of a page that
    stopped at the probe bound, ``ts`` being the start of the last hour probed).
    """

    ts: datetime
    id: str

    def encode(self) -> str:
        """``<ISO ts>|<_id>``, the API's ``next_cursor``."""
        return f"{iso_z(self.ts)}|{self.id}"

    def passes(self, doc: dict[str, Any]) -> bool:
        """True if ``doc`` sorts strictly after the cursor (is on a later page)."""
        return doc["ts"] < self.ts or (doc["ts"] == self.ts and doc["_id"] < self.id)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """One history page request for a device."""

    tenant: str
    device: str
    limit: int
    stream: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    cursor: Cursor | None = None

    def keeps(self, doc: dict[str, Any]) -> bool:
        """The filters other than the hour key."""
        if self.stream is not None and doc["stream"] != self.stream:
            return False
        if self.start is not None and doc["ts"] < self.start:
            return False
        if self.end is not None and doc["ts"] > self.end:
            return False
        return self.cursor is None or self.cursor.passes(doc)


@dataclass(slots=True)
class HistoryPage:
    """Readings newest first, and where the next page starts (None: nothing more)."""

    docs: list[dict[str, Any]]
    next_cursor: Cursor | None
    probes: int


def floor_hour(ts: datetime) -> datetime:
    """The start of ``ts``'s UTC hour."""
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def page_history(
    query: HistoryQuery,
    fetch_hour: Callable[[str], Iterable[dict[str, Any]]],
    first_ts: datetime | None,
    last_ts: datetime | None,
    max_probes: int = MAX_HOUR_PROBES,
) -> HistoryPage:
    """Walk the device's hours newest first; ``fetch_hour(hk)`` returns one hour's readings.

    ``first_ts``/``last_ts`` bound the hours that can hold readings (from device state;
    None: the device has none).
    """
    if first_ts is None or last_ts is None:
        return HistoryPage([], None, 0)
    upper = last_ts if query.end is None else min(last_ts, query.end)
    if query.cursor is not None:
        cursor_top = query.cursor.ts - (_JUST_BEFORE if not query.cursor.id else timedelta())
        upper = min(upper, cursor_top)
    lowest = floor_hour(first_ts if query.start is None else max(first_ts, query.start))
    hour, probes = floor_hour(upper), 0
    docs: list[dict[str, Any]] = []
    while hour >= lowest:
        if probes == max_probes:
            return HistoryPage(docs, Cursor(hour + HOUR, ""), probes)
        probes += 1
        found = [
            d for d in fetch_hour(hour_key(query.tenant, query.device, hour)) if query.keeps(d)
        ]
        found.sort(key=lambda d: (d["ts"], d["_id"]), reverse=True)
        for doc in found:
            docs.append(doc)
            if len(docs) == query.limit:
                return HistoryPage(docs, Cursor(doc["ts"], doc["_id"]), probes)
        hour -= HOUR
    return HistoryPage(docs, None, probes)


def read_history(
    db: Database, query: HistoryQuery, max_probes: int = MAX_HOUR_PROBES
) -> HistoryPage:
    """One history page of a device, by hour-key equality reads bounded by its state."""
    state = device_state.get(db, query.device) or {}
    collection = db[mongo.TELEMETRY]

    def fetch_hour(hk: str) -> list[dict[str, Any]]:
        filt: dict[str, Any] = {"hk": hk}
        if query.stream is not None:
            filt["stream"] = query.stream
        return list(each_reading(collection.find(filt, {"tenant": 0, "hk": 0})))

    return page_history(query, fetch_hour, state.get("first_ts"), state.get("last_ts"), max_probes)


def raw_series(
    db: Database,
    tenant: str,
    device: str,
    metric: str,
    start: datetime,
    end: datetime,
    stream: str | None = None,
) -> list[tuple[datetime, float]]:
    """``(ts, value)`` of one numeric metric, oldest first, read hour by hour by ``hk``
    (batch documents expanded: each reading is kept by its own ``ts``)."""
    points: list[tuple[datetime, float]] = []
    projection = with_batch_fields({"ts": 1, "values": 1})
    hour = floor_hour(start)
    while hour <= end:
        filt: dict[str, Any] = {"hk": hour_key(tenant, device, hour)}
        if stream is not None:
            filt["stream"] = stream
        for doc in each_reading(db[mongo.TELEMETRY].find(filt, projection)):
            value = doc["values"].get(metric)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if numeric and start <= doc["ts"] <= end:
                points.append((doc["ts"], value))
        hour += HOUR
    return sorted(points)
