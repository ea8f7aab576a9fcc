"""One-time migration: hour keys for readings stored before ``hk`` existed.

Such readings have no ``hk``, so nothing that reads by key (history, charts, rollups,
retention) sees them. :func:`backfill_hour_keys` finds them and, batch by batch:

1. records the batch's device-hours in a journal (``migrations``, ``_id: backfill-hk``);
2. folds the readings into ``device_state`` (:func:`fairway.storage.device_state.fold`,
   ``apply``: ``$min first_ts`` moves the device's first hour back to them, so history
   walks down to them and retention deletes them when their time comes);
3. sets ``hk`` on each reading (by ``_id``, at most 25 updates per command);
4. marks every device-hour of the batch ``rollup_pending``
   (:func:`fairway.storage.rollups.mark_pending`), *after* the keys are set, so the
   rollup task computes the hour with these readings in it.

Finding them is one scan of ``telemetry`` (``{hk: {$exists: false}}``: FerretDB cannot
serve ``$exists`` from an index), acceptable once; the cursor is read in batches, so
memory is bounded by the batch. Every step is idempotent (the key is a function of the
reading, the fold and the marks can be applied again), and a run can be interrupted
anywhere: the next run first re-marks the journal's hours (whose readings may already
have their key but not yet their mark), then scans again and finds what is left. A run
ends with a pass that finds nothing, so a second run changes nothing (one scan).

Device-batch documents (:mod:`fairway.kernel.batch_document`) are always written with
``hk``, so this never finds one: it reads only documents of one reading each.

Cost: one ``_id`` update per reading (on PostgreSQL and MongoDB an indexed equality;
on FerretDB's SQLite backend a scan per reading, so migrate there only small data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from itertools import islice
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from fairway.kernel.contract import hour_key, split_reading_id
from fairway.storage import device_state, rollups
from fairway.storage.device_state import MAX_UPDATES_PER_BULK
from fairway.storage.mongo import MIGRATIONS, TELEMETRY
from fairway.storage.telemetry import floor_hour

JOURNAL_ID = "backfill-hk"
BATCH_SIZE = 1000
# Tenant, device and message id come from ``_id`` (returned by every find).
_FIELDS = {"stream": 1, "ts": 1, "values": 1}

Hour = tuple[str, str, datetime]
Report = Callable[[dict[str, int]], None]


def _batches(docs: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(docs)
    while batch := list(islice(it, size)):
        yield batch


def _journal(db: Database, hours: list[Hour]) -> None:
    # Documents, not [tenant, device, hour] arrays: FerretDB refuses nested arrays.
    entries = [{"tenant": t, "device": d, "hour": h} for t, d, h in hours]
    db[MIGRATIONS].update_one({"_id": JOURNAL_ID}, {"$set": {"hours": entries}}, upsert=True)


def replay_journal(db: Database) -> int:
    """Mark the hours of an interrupted batch (their readings may have ``hk`` already,
    but not their mark); the number of hours."""
    journal = db[MIGRATIONS].find_one({"_id": JOURNAL_ID})
    hours = [(e["tenant"], e["device"], e["hour"]) for e in (journal or {}).get("hours", [])]
    if hours:
        rollups.mark_pending(db, hours)
        _journal(db, [])
    return len(hours)


def key_batch(db: Database, docs: list[dict[str, Any]]) -> int:
    """Steps 1-4 for one batch of readings without ``hk``; the number of device-hours."""
    keys = [split_reading_id(d["_id"])[:2] for d in docs]  # (tenant, device)
    hours = sorted({(t, dev, floor_hour(d["ts"])) for (t, dev), d in zip(keys, docs, strict=True)})
    _journal(db, hours)
    device_state.apply(db, device_state.fold(docs))
    ops = [
        UpdateOne({"_id": d["_id"]}, {"$set": {"hk": hour_key(t, dev, d["ts"])}})
        for (t, dev), d in zip(keys, docs, strict=True)
    ]
    for start in range(0, len(ops), MAX_UPDATES_PER_BULK):
        db[TELEMETRY].bulk_write(ops[start : start + MAX_UPDATES_PER_BULK], ordered=True)
    rollups.mark_pending(db, hours)
    return len(hours)


def backfill_hour_keys(
    db: Database, batch_size: int = BATCH_SIZE, report: Report | None = None
) -> dict[str, int]:
    """Key every reading without ``hk``, in passes over ``telemetry`` until one finds none.

    Returns ``{"readings", "hours", "passes", "replayed"}``; ``report`` gets the running
    totals after every batch.
    """
    totals = {"readings": 0, "hours": 0, "passes": 0, "replayed": replay_journal(db)}
    while True:
        totals["passes"] += 1
        found = 0
        cursor = db[TELEMETRY].find({"hk": {"$exists": False}}, _FIELDS, batch_size=batch_size)
        with cursor:
            for batch in _batches(cursor, batch_size):
                totals["hours"] += key_batch(db, batch)
                totals["readings"] += len(batch)
                found += len(batch)
                if report is not None:
                    report(dict(totals))
        if found == 0:
            break
    db[MIGRATIONS].delete_one({"_id": JOURNAL_ID})
    return totals
