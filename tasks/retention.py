"""Retention: delete readings older than their tenant's plan allows, and expired jobs.

A tenant's plan sets ``retention_days`` on its tenant document; tenants without one
keep ``default_retention_days``. Deletion is by device time (``ts``) with
``delete_many``, which both MongoDB and FerretDB 1.24 support (MongoDB's TTL indexes
would need one policy for every tenant). Every step is idempotent, so a run that is
interrupted and redelivered simply deletes what is left.

FerretDB 1.24 (SQLite) refuses a delete that matches more than 32,766 documents
("too many SQL variables", SQLite's bound on one statement's parameters), and
deleting by ``_id`` costs a full scan per document there. So a refused delete is
split in two halves of its time range, recursively, until each half fits: one
statement on MongoDB, a few full scans on FerretDB.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import OperationFailure

import tasks.export as export
from fairway.storage import job_records
from fairway.storage.mongo import TELEMETRY, TENANTS

Progress = Callable[[int, int], None]
MAX_SPLITS = 40  # halvings of a time range: far below a millisecond of a century


def _too_many_matches(exc: OperationFailure) -> bool:
    return "too many SQL variables" in str(exc)


def delete_older(db: Database, tenant: str, cutoff: datetime) -> int:
    """Delete the tenant's readings with device time before ``cutoff``; return the count."""
    query = {"tenant": tenant, "ts": {"$lt": cutoff}}
    try:
        return db[TELEMETRY].delete_many(query).deleted_count
    except OperationFailure as exc:
        if not _too_many_matches(exc):
            raise
    oldest = newest = None
    for doc in db[TELEMETRY].find(query, {"_id": 0, "ts": 1}):
        ts = doc["ts"]
        oldest = ts if oldest is None or ts < oldest else oldest
        newest = ts if newest is None or ts > newest else newest
    if oldest is None or newest is None:
        return 0
    # Halve only the span that holds readings: far fewer full scans on FerretDB.
    return _delete_range(db, tenant, oldest, newest + timedelta(milliseconds=1), 0)


def _delete_range(db: Database, tenant: str, lo: datetime, hi: datetime, depth: int) -> int:
    """Delete readings in ``[lo, hi)``, halving the range while the database refuses."""
    if lo >= hi:
        return 0
    query = {"tenant": tenant, "ts": {"$gte": lo, "$lt": hi}}
    try:
        return db[TELEMETRY].delete_many(query).deleted_count
    except OperationFailure as exc:
        if not _too_many_matches(exc) or depth >= MAX_SPLITS:
            raise
    mid = lo + (hi - lo) / 2
    return _delete_range(db, tenant, lo, mid, depth + 1) + _delete_range(
        db, tenant, mid, hi, depth + 1
    )


def retention_days(tenant_doc: dict[str, Any], default_days: int) -> int:
    """The tenant plan's retention in days (at least 1), else the default."""
    days = tenant_doc.get("retention_days")
    if isinstance(days, int | float) and not isinstance(days, bool) and days >= 1:
        return int(days)
    return default_days


def apply_retention(
    db: Database, default_days: int, job_ttl_s: float, now: datetime, progress: Progress
) -> dict[str, Any]:
    """Delete old readings per tenant, then expired job records and export files."""
    tenants = list(db[TENANTS].find({}, {"retention_days": 1}).sort("_id", 1))
    deleted: dict[str, int] = {}
    for done, doc in enumerate(tenants):
        progress(done, len(tenants))
        cutoff = now - timedelta(days=retention_days(doc, default_days))
        deleted[doc["_id"]] = delete_older(db, doc["_id"], cutoff)
    progress(len(tenants), len(tenants))
    expired = job_records.expired_jobs(db, now - timedelta(seconds=job_ttl_s))
    for job_id in expired:
        export.delete_file(db, job_id)
    job_records.delete_jobs(db, expired)
    return {
        "at": now.astimezone(UTC).isoformat(),
        "readings_deleted": deleted,
        "jobs_expired": len(expired),
    }
