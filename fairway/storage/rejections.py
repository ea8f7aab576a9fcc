"""Archived rejections (collection ``rejections``): listing and trimming per device."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.database import Database

from fairway.storage import mongo

OR_CHUNK = 200  # devices per trimming delete


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
) -> list[dict[str, Any]]:
    """Newest first: the tenant's (every tenant's for None) archived rejections.

    ``device`` narrows to one device; ``before`` pages back (``at`` strictly earlier).
    ``_id`` comes back as a string.
    """
    query: dict[str, Any] = {}
    if tenant is not None:
        query["tenant"] = tenant
    if device is not None:
        query["device"] = device
    if before is not None:
        query["at"] = {"$lt": before}
    docs = (
        db[mongo.REJECTIONS]
        .find(query)
        .sort([("at", DESCENDING), ("_id", DESCENDING)])
        .limit(max(1, int(limit)))
    )
    return [{**doc, "_id": str(doc["_id"])} for doc in docs]
