"""Rollups folded by the scheduler from the readings it has just stored.

The sink hands every batch's outcome to :class:`RollupFolder`: readings its insert
stored are folded in memory, per hour, device and stream (count/min/max/sum per metric
and per minute); once an hour has closed plus ``flush_grace`` its folds are written as
this writer's parts (:func:`fairway.storage.rollups.store_parts`), a few documents per
device-stream-hour instead of reading every reading back.

Every case the fold cannot vouch for goes to the rollup task instead (a
``rollup_pending`` mark; the hour is then recomputed from the raw readings, where each
reading names its writer in ``w``):

* a **duplicate** (a redelivery: the first insert may have been this writer's or a lost
  one's, folded or not): the device-hour is handed over, its fold dropped;
* a **late** reading, for an hour this writer already wrote (or had closed when it started);
* a **spill**: more figures in memory than ``max_cells``, the oldest hour is handed over;
* a **lost writer** (kill -9, or silent for the lease): before a batch that opens a
  device-hour is acked, the device-hour is recorded in ``rollup_touched``
  (:mod:`fairway.storage.rollup_writers`); the rollup task marks a lost writer's
  recorded hours pending.

On :meth:`RollupFolder.close` the closed hours are written and the open ones left to
the rollup task (the writer is declared closed): a part is never written for an hour
that may still grow, so charts fold open hours from raw readings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database

from fairway.kernel.contract import Written, WrittenBatch
from fairway.storage import rollup_writers, rollups
from fairway.storage.rollup_writers import DeviceHour
from fairway.storage.rollups import HourFold
from fairway.storage.telemetry import HOUR, floor_hour
from scheduler import metrics

log = logging.getLogger(__name__)

# Parts per store_parts call when an hour is written (two documents each).
PARTS_PER_WRITE = 500
# Device-hours whose open hour this process has marked (least recently used dropped).
MAX_MARKED = 100_000


@dataclass(slots=True)
class _DeviceHourFold:
    """One device-hour's folds per stream, and whether it is recorded in rollup_touched."""

    streams: dict[str, HourFold] = field(default_factory=dict)
    recorded: bool = False
    cells: int = 0

    def count_cells(self) -> int:
        """The figures its folds hold, counted again (``cells`` is kept as they are added)."""
        return sum(
            len(f.metrics) + sum(len(m) for m in f.minutes.values()) for f in self.streams.values()
        )


# A device-hour handed over to the rollup task: later readings of it are marked too.
_HANDED_OVER = None
Hour = dict[tuple[str, str], _DeviceHourFold | None]


def _now() -> datetime:
    return datetime.fromtimestamp(time.time(), UTC)


class RollupMarker:
    """Writes ``rollup_pending`` marks; an open hour is marked once per process.

    A closed hour (late data, redeliveries) is marked every time, since its rollup may
    already have been computed.
    """

    def __init__(self, db: Database, remember: int = MAX_MARKED) -> None:
        self._db, self._remember = db, remember
        self._lock = threading.Lock()
        # One mark write at a time: FerretDB 1.24 applies two concurrent upserts of one
        # _id as read, then insert, and answers the loser with a reply pymongo cannot
        # read (KeyError 'nModified'), failing a batch that was stored.
        self._write_lock = threading.Lock()
        self._marked: OrderedDict[DeviceHour, None] = OrderedDict()

    def mark(self, keys: set[DeviceHour]) -> None:
        """Mark device-hours whose readings are already stored; raise on error."""
        # "Open" is judged after the insert: a reading stored before its hour ended is
        # visible to a rollup computed after the hour ended plus the grace.
        now = _now()
        with self._lock:
            needed = [k for k in keys if k[2] + HOUR <= now or k not in self._marked]
        if not needed:
            return
        with self._write_lock:
            rollups.mark_pending(self._db, sorted(needed))
        with self._lock:
            for key in needed:
                if key[2] + HOUR > now:
                    self._marked[key] = None
            while len(self._marked) > self._remember:
                self._marked.popitem(last=False)


class RollupFolder:
    """One writer's in-memory rollups: fold stored readings, write closed hours' parts."""

    def __init__(
        self,
        db: Database,
        flush_grace_s: float = 300.0,
        lease_s: float = 300.0,
        max_cells: int = 400_000,
        tick_s: float = 5.0,
        writer: str | None = None,
        start_thread: bool = True,
    ) -> None:
        self.writer = writer or rollup_writers.new_writer_id()
        self._db = db
        self._grace = timedelta(seconds=flush_grace_s)
        self._lease_s, self._max_cells, self._tick_s = lease_s, max_cells, tick_s
        self._marker = RollupMarker(db)
        self._lock = threading.Lock()
        self._hours: dict[datetime, Hour] = {}
        self._records: dict[datetime, list[str]] = {}  # rollup_touched ids per open hour
        self._unwritten: list[tuple[datetime, Hour, list[str]]] = []  # write failed: retried
        self._unmarked: set[DeviceHour] = set()  # spilled, mark not written yet
        self._cells = 0
        self._closed_upto = self._due_upto(_now())  # hours <= this are the rollup task's
        self._registered = False
        # Writer threads' first batches race to register: two upserts of one new _id make
        # FerretDB answer E11000 to one of them, failing a stored batch (then retried).
        self._register_lock = threading.Lock()
        self._last_beat = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start_thread:
            self._thread = threading.Thread(target=self._run, name="rollup-folder", daemon=True)
            self._thread.start()

    # -- the sink's side (writer threads, before the batch is acked) -------------------
    def record(
        self,
        stored: list[Written],
        duplicates: list[Written],
        batches: Iterable[WrittenBatch] = (),
    ) -> None:
        """Fold the readings the insert stored; hand over what it cannot vouch for.

        Each document comes with the ``(tenant, device, message id)`` of its ``_id``;
        ``batches``: the batch documents stored, whose readings share tenant, device,
        stream and hour (looked up once per document, then each reading folded).

        Raises if a record or mark could not be written: the batch is then not acked,
        and its retry finds its readings stored (duplicates), which hands them over.
        """
        if not self._registered:
            with self._register_lock:
                if not self._registered:
                    self._beat()
        marks: set[DeviceHour] = set()
        to_record: dict[datetime, set[tuple[str, str]]] = {}
        with self._lock:
            for (tenant, device, _), doc in duplicates:
                key = (tenant, device, floor_hour(doc["ts"]))
                self._hand_over(key, "duplicate")
                marks.add(key)
            hour = floor_hour(_now())
            # What depends on the hour only, looked up again when the hour changes (the
            # lock is held: _closed_upto and _hours change under it only).
            end, late, folds = hour, False, None
            for (tenant, device, _), doc in stored:
                ts = doc["ts"]
                # A batch's readings mostly share an hour: floor_hour (~1 us) only when
                # the UTC hour changes.
                if ts.tzinfo is not UTC or not hour <= ts < end:
                    hour = floor_hour(ts)
                    end, late, folds = hour + HOUR, hour <= self._closed_upto, None
                td = (tenant, device)
                if late:
                    marks.add((*td, hour))
                    metrics.ROLLUP_HANDED_OVER.labels("late").inc()
                    continue
                if folds is None:
                    folds = self._hours.get(hour)
                    if folds is None:
                        folds = self._hours[hour] = {}
                entry = folds.get(td)
                if entry is None:
                    if td in folds:  # handed over (_HANDED_OVER)
                        marks.add((*td, hour))
                        continue
                    entry = folds[td] = _DeviceHourFold()
                fold = entry.streams.get(doc["stream"])
                if fold is None:
                    fold = entry.streams[doc["stream"]] = HourFold()
                # Counted as they are added (not recounted per batch: an hour's minutes
                # make that a loop over up to 60 x metrics figures per device and batch).
                added = fold.add(ts.minute, doc["values"])
                if added:
                    entry.cells += added
                    self._cells += added
                if not entry.recorded:
                    to_record.setdefault(hour, set()).add(td)
            for tenant, device, stream, _received, members in batches:
                ts = members[0][2]  # the document's hour is every reading's
                if ts.tzinfo is not UTC or not hour <= ts < end:
                    hour = floor_hour(ts)
                    end, late, folds = hour + HOUR, hour <= self._closed_upto, None
                td = (tenant, device)
                if late:
                    marks.add((*td, hour))
                    metrics.ROLLUP_HANDED_OVER.labels("late").inc(len(members))
                    continue
                if folds is None:
                    folds = self._hours.get(hour)
                    if folds is None:
                        folds = self._hours[hour] = {}
                entry = folds.get(td)
                if entry is None:
                    if td in folds:  # handed over (_HANDED_OVER)
                        marks.add((*td, hour))
                        continue
                    entry = folds[td] = _DeviceHourFold()
                fold = entry.streams.get(stream)
                if fold is None:
                    fold = entry.streams[stream] = HourFold()
                add, added = fold.add, 0
                for _, reading, ts in members:
                    added += add(ts.minute, reading["values"])
                if added:
                    entry.cells += added
                    self._cells += added
                if not entry.recorded:
                    to_record.setdefault(hour, set()).add(td)
            self._spill_over_bound()
            metrics.ROLLUP_OPEN_CELLS.set(self._cells)
        for hour, tds in sorted(to_record.items()):
            self._record(hour, tds)
        self._mark(marks)

    def _record(self, hour: datetime, tds: set[tuple[str, str]]) -> None:
        record_id = rollup_writers.record_touched(
            self._db, self.writer, hour, [(t, d, hour) for t, d in sorted(tds)]
        )
        with self._lock:
            folds = self._hours.get(hour)
            if folds is None:  # written meanwhile: the record is not needed any more
                stale = True
            else:
                stale = False
                self._records.setdefault(hour, []).append(record_id)
                for td in tds:
                    entry = folds.get(td)
                    if entry is not None:
                        entry.recorded = True
        if stale:
            rollup_writers.forget_touched(self._db, [record_id])

    def _mark(self, marks: set[DeviceHour]) -> None:
        """Write ``marks`` and the spilled device-hours not marked yet; raise on error."""
        with self._lock:
            spilled = set(self._unmarked)
        self._marker.mark(marks | spilled)
        if spilled:
            with self._lock:
                self._unmarked -= spilled

    def _hand_over(self, key: DeviceHour, why: str) -> None:
        """Drop a device-hour's fold (lock held); its readings go to the rollup task."""
        tenant, device, hour = key
        if hour <= self._closed_upto:
            return
        folds = self._hours.setdefault(hour, {})
        entry = folds.get((tenant, device))
        if entry is not None:
            self._cells -= entry.cells
        if (tenant, device) not in folds or entry is not None:
            metrics.ROLLUP_HANDED_OVER.labels(why).inc()
        folds[(tenant, device)] = _HANDED_OVER

    def _spill_over_bound(self) -> None:
        """Hand over whole hours, oldest first, while over ``max_cells`` (lock held)."""
        for hour in sorted(self._hours):
            if self._cells <= self._max_cells:
                return
            for (tenant, device), entry in list(self._hours[hour].items()):
                if entry is not None:
                    self._hand_over((tenant, device, hour), "spill")
                    self._unmarked.add((tenant, device, hour))

    # -- the writer's own thread ---------------------------------------------------------
    def flush_due(self, now: datetime | None = None) -> int:
        """Write the parts of every hour closed ``flush_grace`` before ``now``; parts written."""
        now = now or _now()
        with self._lock:
            upto = self._due_upto(now)
            for hour in sorted(h for h in self._hours if h <= upto):
                self._unwritten.append((hour, self._hours.pop(hour), self._records.pop(hour, [])))
            self._closed_upto = max(self._closed_upto, upto)
            work, self._unwritten = self._unwritten, []
        written = 0
        for i, (hour, folds, record_ids) in enumerate(work):
            try:
                written += self._write_hour(hour, folds, record_ids)
            except Exception:
                log.warning("writing the rollups of %s failed; retried", hour, exc_info=True)
                metrics.ROLLUP_WRITE_FAILURES.inc()
                with self._lock:
                    self._unwritten = work[i:] + self._unwritten
                break
        return written

    def _write_hour(self, hour: datetime, folds: Hour, record_ids: list[str]) -> int:
        parts: list[tuple[dict[str, Any], dict[str, Any]]] = []
        handed: set[DeviceHour] = set()
        for (tenant, device), entry in sorted(folds.items()):
            if entry is None:
                handed.add((tenant, device, hour))
            else:
                docs = rollups.hour_documents(tenant, device, hour, entry.streams, self.writer)
                parts.extend(docs)
        for start in range(0, len(parts), PARTS_PER_WRITE):
            rollups.store_parts(self._db, parts[start : start + PARTS_PER_WRITE])
        # Again for handed-over ones (a mark written then may be computed already), and
        # first for spilled ones whose mark failed: before the records go.
        self._mark(handed)
        rollup_writers.forget_touched(self._db, record_ids)
        cells = sum(e.cells for e in folds.values() if e is not None)
        with self._lock:
            self._cells -= cells
            metrics.ROLLUP_OPEN_CELLS.set(self._cells)
        metrics.ROLLUP_PARTS_WRITTEN.inc(len(parts))
        return len(parts)

    def close(self) -> None:
        """Write the closed hours; leave the open ones to the rollup task (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._tick_s + 5)
        try:
            self.flush_due()
            if self._registered:
                rollup_writers.close(self._db, self.writer)
        except Exception:
            log.warning("closing rollup writer %s failed; the lease recovers it", self.writer)

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s):
            try:
                if self._registered and time.monotonic() - self._last_beat >= self._lease_s / 4:
                    self._beat()
                self.flush_due()
            except Exception:
                log.warning("rollup writer %s: tick failed", self.writer, exc_info=True)

    def _beat(self) -> None:
        was_lost = rollup_writers.beat(self._db, self.writer, _now())
        self._last_beat = time.monotonic()
        if was_lost and self._registered:
            # Declared lost while alive (a stall longer than the lease): the recovery
            # deleted its records, so record every hour it still folds again.
            log.warning("rollup writer %s was taken for lost; recording again", self.writer)
            with self._lock:
                open_hours = {
                    hour: {td for td, e in folds.items() if e is not None}
                    for hour, folds in self._hours.items()
                }
            for hour, tds in sorted(open_hours.items()):
                if tds:
                    self._record(hour, tds)
        self._registered = True

    def _due_upto(self, now: datetime) -> datetime:
        """The last hour start whose hour closed at least ``flush_grace`` before ``now``."""
        return floor_hour(now - HOUR - self._grace)
