"""Rollup writers: which scheduler processes hold folds in memory, and of which hours.

A writer (one :class:`scheduler.rollup_folder.RollupFolder`, id ``w``) registers in
``rollup_writers`` and beats there while it lives. Before the readings of a device-hour
it folds for the first time are acked, it records the device-hour in ``rollup_touched``
(one document per batch and hour, inserted: cheap); it deletes those records once the
hour's parts are written. If the writer is lost (no beat for a lease, or closed with
hours still open), :func:`recover_lost_writers` turns its records into
``rollup_pending`` marks, so those hours are recomputed from the raw readings, which
carry ``w``: nothing the writer folded but never wrote is lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database

from fairway.storage import rollups
from fairway.storage.mongo import ROLLUP_TOUCHED, ROLLUP_WRITERS

DeviceHour = tuple[str, str, datetime]  # (tenant, device, hour start)


def new_writer_id() -> str:
    """A short random id, stored in every reading the writer inserts (``w``)."""
    return uuid.uuid4().hex[:12]


def beat(db: Database, writer: str, now: datetime) -> bool:
    """Register or refresh ``writer``; True if it was not registered (new, or declared lost)."""
    result = db[ROLLUP_WRITERS].update_one(
        {"_id": writer}, {"$set": {"beat": now, "closed": False}}, upsert=True
    )
    return result.upserted_id is not None


def close(db: Database, writer: str) -> None:
    """Tell the recovery that ``writer`` will write nothing more (its open hours are recomputed)."""
    db[ROLLUP_WRITERS].update_one({"_id": writer}, {"$set": {"closed": True}})


def record_touched(db: Database, writer: str, hour: datetime, keys: list[DeviceHour]) -> str:
    """Record device-hours of ``hour`` that ``writer`` folds; the record's id. Raises on error."""
    record_id = uuid.uuid4().hex
    db[ROLLUP_TOUCHED].insert_one(
        {
            "_id": record_id,
            "w": writer,
            "hour": hour,
            "at": datetime.now(UTC),
            # Two columns: FerretDB 1.24 stores no nested arrays.
            "tenants": [tenant for tenant, _, _ in keys],
            "devices": [device for _, device, _ in keys],
        }
    )
    return record_id


def forget_touched(db: Database, record_ids: Iterable[str]) -> None:
    """Delete records whose hours' parts are written."""
    for record_id in record_ids:
        db[ROLLUP_TOUCHED].delete_one({"_id": record_id})


def recover_lost_writers(db: Database, now: datetime, lease: timedelta) -> dict[str, int]:
    """Mark pending every device-hour recorded by a lost writer, then forget the writer.

    Lost: closed, silent for ``lease``, or unknown (its records older than ``lease``, so
    a writer registering right now is not taken for lost). Marks come before the records
    are deleted: a crash in between only marks again.
    """
    writers = {w["_id"]: w for w in db[ROLLUP_WRITERS].find()}

    def lost(writer: dict[str, Any] | None) -> bool:
        return writer is None or writer.get("closed", False) or writer["beat"] < now - lease

    hours = records = 0
    for record in list(db[ROLLUP_TOUCHED].find()):
        writer = writers.get(record["w"])
        if not lost(writer) or (writer is None and record["at"] > now - lease):
            continue
        pairs = zip(record["tenants"], record["devices"], strict=True)
        keys = [(tenant, device, record["hour"]) for tenant, device in pairs]
        rollups.mark_pending(db, keys)
        db[ROLLUP_TOUCHED].delete_one({"_id": record["_id"]})
        hours += len(keys)
        records += 1
    forgotten = 0
    for writer_id, writer in writers.items():
        if lost(writer):
            db[ROLLUP_WRITERS].delete_one({"_id": writer_id, "beat": writer["beat"]})
            forgotten += 1
    return {"lost_writers": forgotten, "recovered_hours": hours, "recovered_records": records}
