"""What the rollup layouts share: read keys, figures and how a fold is stored.

Used by :mod:`fairway.storage.rollups` (hourly and minute documents) and
:mod:`fairway.storage.rollup_days` (day documents), which import it, not each other.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from fairway.storage import mongo

Stats = dict[str, float]  # {n, min, max, sum}


def day_key(tenant: str, device: str, day: datetime) -> str:
    """``dk``: a device's rollups of one UTC day."""
    return f"{tenant}:{device}:{day.astimezone(UTC):%Y%m%d}"


def month_key(tenant: str, device: str, day: datetime) -> str:
    """``mk``: a device's hourly rollups of one UTC month (a month chart: 1-2 reads)."""
    return f"{tenant}:{device}:{day.astimezone(UTC):%Y%m}"


def tenant_day_key(tenant: str, day: datetime) -> str:
    """``tk``: every hourly rollup of a tenant for one UTC day (a one-day report)."""
    return f"{tenant}:{day.astimezone(UTC):%Y%m%d}"


def merge_stats(point: Stats, s: Stats) -> None:
    """Fold figures ``s`` into ``point`` (both ``{n, min, max, sum}``)."""
    point["n"] += s["n"]
    point["min"] = min(point["min"], s["min"])
    point["max"] = max(point["max"], s["max"])
    point["sum"] += s["sum"]


def store_newer(collection: Collection, docs: list[dict[str, Any]]) -> None:
    """Insert ``docs``; where one exists, replace it only if it folds fewer readings."""
    if not docs:
        return
    try:
        collection.insert_many(docs, ordered=False)
        return
    except BulkWriteError as exc:
        if exc.details.get("writeConcernErrors"):
            raise
        errors = exc.details.get("writeErrors", ())
        if any(e["code"] != mongo.DUPLICATE_KEY for e in errors):
            raise
        existing = [docs[e["index"]] for e in errors]
    for doc in existing:
        fields = {k: v for k, v in doc.items() if k != "_id"}
        # Duplicate key: a fold of as many or more of the writer's readings is stored. One
        # document at a time: FerretDB 1.24 answers a bulk update with a write error in a
        # shape pymongo cannot merge.
        with suppress(DuplicateKeyError):
            collection.update_one(
                {"_id": doc["_id"], "n": {"$lt": doc["n"]}}, {"$set": fields}, upsert=True
            )


def projection_of(metric: str, at: str = "hour") -> dict[str, int] | None:
    """The projection a chart of ``metric`` needs: the time (``at``) and that metric's figures.

    FerretDB still reads and decodes whole documents, but it encodes, sends, and the
    driver decodes, only these (a month key read: 20-30 % less time in a probe). None for a name
    a projection cannot express (no stored value key is one: they are ``[A-Za-z0-9_:-]``).
    """
    if not metric or "." in metric or metric.startswith("$") or "\0" in metric:
        return None
    return {"_id": 0, at: 1, f"metrics.{metric}": 1}


def merge_into(into: dict[datetime, Stats], at: datetime, s: Stats) -> None:
    """Fold figures ``s`` into the point ``at`` of ``into``."""
    point = into.get(at)
    if point is None:
        into[at] = {"n": s["n"], "min": s["min"], "max": s["max"], "sum": s["sum"]}
    else:
        merge_stats(point, s)
