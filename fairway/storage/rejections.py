"""Archived rejections (collection ``rejections``): listing, trimming per device, counts by
reason (collection ``rejection_counts``) and the marks that make a replay happen once."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import DESCENDING, ReturnDocument, UpdateOne
from pymongo.database import Database

from fairway.storage import mongo

OR_CHUNK = 200  # devices per trimming delete
COUNT_HOURS_KEPT = 7 * 24  # rejection_counts documents older than this are deleted
MAX_UPDATES_PER_BULK = 25  # FerretDB 1.24 hangs on update commands of ~50 statements


def trim(
    db: Database, devices: set[str | None] | None, keep: int, down_to: int | None = None
) -> int:
    """Devices (of ``devices``; None: all) with more than ``keep`` rejections keep
    only their ``down_to`` (default ``keep``) newest.

    Trimming below the cap means a device is trimmed once per ``keep - down_to`` new
    rejections rather than on every pass.

    FerretDB 1.24 reads without indexes: every query is a collection scan, so a
    query (or a delete) per device would make trimming quadratic. This takes three
    scans whatever the number of devices: a ``$group`` to count, one read of the
    over-full devices' times, and one delete whose ``$or`` gives each of them its
    cut-off time (``at`` is unique per archiver, see ``archiver.service.Archiver._next_at``).
    Returns how many documents were deleted.
    """
    low = max(1, keep if down_to is None else min(down_to, keep))
    collection = db[mongo.REJECTIONS]
    match = {} if devices is None else {"device": {"$in": sorted(devices, key=str)}}
    counts = collection.aggregate(
        [{"$match": match}, {"$group": {"_id": "$device", "n": {"$sum": 1}}}]
    )
    over = [c["_id"] for c in counts if c["n"] > keep]
    if not over:
        return 0
    times: dict[Any, list[datetime]] = defaultdict(list)
    for doc in collection.find({"device": {"$in": over}}, {"device": 1, "at": 1, "_id": 0}):
        times[doc.get("device")].append(doc["at"])
    cutoffs = []
    for device, ats in times.items():
        if len(ats) > keep:
            ats.sort(reverse=True)
            cutoffs.append({"device": device, "at": {"$lt": ats[low - 1]}})
    deleted = 0
    for start in range(0, len(cutoffs), OR_CHUNK):
        clauses = cutoffs[start : start + OR_CHUNK]
        deleted += collection.delete_many({"$or": clauses}).deleted_count
    return deleted


def list_rejections(
    db: Database,
    tenant: str | None,
    device: str | None = None,
    limit: int = 100,
    before: datetime | None = None,
    reason: str | None = None,
    unowned: bool = False,
) -> list[dict[str, Any]]:
    """Newest first: the tenant's (every tenant's for None) archived rejections.

    ``device`` narrows to one device, ``reason`` to one reason code; ``before`` pages back
    (``at`` strictly earlier). ``unowned`` (with a tenant and a device) also returns the
    device's rejections archived with no tenant (refused before it was registered).
    ``_id`` comes back as a string.
    """
    query: dict[str, Any] = {}
    if tenant is not None:
        query["tenant"] = {"$in": [tenant, None]} if unowned and device else tenant
    if device is not None:
        query["device"] = device
    if reason is not None:
        query["reason"] = reason
    if before is not None:
        query["at"] = {"$lt": before}
    docs = (
        db[mongo.REJECTIONS]
        .find(query)
        .sort([("at", DESCENDING), ("_id", DESCENDING)])
        .limit(max(1, int(limit)))
    )
    return [{**doc, "_id": str(doc["_id"])} for doc in docs]


def get_rejection(db: Database, rejection_id: str) -> dict[str, Any] | None:
    """One archived rejection by its id (a string; None if malformed or missing)."""
    try:
        oid = ObjectId(rejection_id)
    except (InvalidId, TypeError):
        return None
    return db[mongo.REJECTIONS].find_one({"_id": oid})


# -- replay marks ------------------------------------------------------------------------
def claim_replay(db: Database, rejection_id: str, mark: dict[str, Any]) -> dict[str, Any] | None:
    """Mark the rejection as replayed (``replay: mark``) unless it already is: the updated
    document, or None if it was replayed before (or is missing). The one atomic step that
    makes a replay happen at most once, whatever the number of callers."""
    return db[mongo.REJECTIONS].find_one_and_update(
        {"_id": ObjectId(rejection_id), "replay": {"$exists": False}},
        {"$set": {"replay": mark}},
        return_document=ReturnDocument.AFTER,
    )


def release_replay(db: Database, rejection_id: str) -> None:
    """Remove the mark of a replay whose publish failed (it may be tried again)."""
    db[mongo.REJECTIONS].update_one({"_id": ObjectId(rejection_id)}, {"$unset": {"replay": ""}})


def later_of_device(db: Database, device: str, after: datetime) -> list[dict[str, Any]]:
    """The device's rejections archived after ``after`` (a replay refused again is one)."""
    docs = db[mongo.REJECTIONS].find({"device": device})
    return [d for d in docs if d.get("at") is not None and d["at"] > after]


# -- counts by reason --------------------------------------------------------------------
def _hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def count_archived(db: Database, docs: Iterable[dict[str, Any]], source: str) -> None:
    """Add archived rejections to ``rejection_counts``: one document per (tenant, UTC hour,
    ``source``) with ``counts.<reason>``. ``source`` names the archiver process: FerretDB
    1.24 applies an update as read, modify, write, so two archivers incrementing one
    document could lose counts; each increments its own and readers add them up."""
    totals: Counter[tuple[str | None, datetime, str]] = Counter(
        (d.get("tenant"), _hour(d["at"]), d["reason"]) for d in docs
    )
    per_doc: dict[tuple[str | None, datetime], dict[str, int]] = defaultdict(dict)
    for (tenant, hour, reason), n in totals.items():
        per_doc[(tenant, hour)][f"counts.{reason}"] = n
    ops = [
        UpdateOne(
            {"_id": f"{tenant or ''}|{hour:%Y%m%d%H}|{source}"},
            {"$set": {"tenant": tenant, "hour": hour}, "$inc": incs},
            upsert=True,
        )
        for (tenant, hour), incs in per_doc.items()
    ]
    for start in range(0, len(ops), MAX_UPDATES_PER_BULK):
        db[mongo.REJECTION_COUNTS].bulk_write(ops[start : start + MAX_UPDATES_PER_BULK])


def reason_counts(
    db: Database, tenant: str | None, since: datetime
) -> dict[str | None, dict[datetime, Counter[str]]]:
    """Rejections archived per tenant (every tenant's for None; no tenant: the key None),
    UTC hour from ``since``'s hour, and reason. One equality read per tenant (or one read
    of the whole collection, which holds at most a week of hours per tenant)."""
    query = {} if tenant is None else {"tenant": tenant}
    first = _hour(since)
    out: dict[str | None, dict[datetime, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for doc in db[mongo.REJECTION_COUNTS].find(query):
        if doc["hour"] >= first:
            out[doc.get("tenant")][doc["hour"]].update(doc.get("counts") or {})
    return out


def trim_counts(db: Database, now: datetime) -> int:
    """Delete counts older than :data:`COUNT_HOURS_KEPT`; how many documents went."""
    cutoff = _hour(now) - timedelta(hours=COUNT_HOURS_KEPT)
    return db[mongo.REJECTION_COUNTS].delete_many({"hour": {"$lt": cutoff}}).deleted_count
