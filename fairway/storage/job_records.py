"""Job records (collection ``jobs``): who asked for what, so results stay in the tenant.

``{_id: task id, tenant, user, kind, params, created}``. The task's state, progress
and result live in Celery's result collection (``celery_taskmeta``) under the same id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.database import Database

JOBS = "jobs"
REPORT, EXPORT = "report", "export"


def create_job(
    db: Database, job_id: str, tenant: str, user: str, kind: str, params: dict[str, Any]
) -> dict[str, Any]:
    """Record a job before its task is sent."""
    doc = {
        "_id": job_id,
        "tenant": tenant,
        "user": user,
        "kind": kind,
        "params": params,
        "created": datetime.now(UTC),
    }
    db[JOBS].insert_one(doc)
    return doc


def get_job(db: Database, job_id: str) -> dict[str, Any] | None:
    """The job record, or None."""
    return db[JOBS].find_one({"_id": job_id})


def list_jobs(db: Database, tenant: str | None, limit: int) -> list[dict[str, Any]]:
    """A tenant's latest jobs (every tenant's when None), newest first."""
    query = {} if tenant is None else {"tenant": tenant}
    return list(db[JOBS].find(query).sort("created", DESCENDING).limit(limit))


def delete_job(db: Database, job_id: str) -> None:
    """Forget a job (its task could not be sent)."""
    db[JOBS].delete_one({"_id": job_id})


def expired_jobs(db: Database, cutoff: datetime) -> list[str]:
    """Ids of jobs created before ``cutoff``."""
    return [doc["_id"] for doc in db[JOBS].find({"created": {"$lt": cutoff}}, {"_id": 1})]


def delete_jobs(db: Database, job_ids: list[str]) -> int:
    """Remove job records; return how many went."""
    if not job_ids:
        return 0
    return db[JOBS].delete_many({"_id": {"$in": job_ids}}).deleted_count


def ensure_indexes(db: Database) -> None:
    """Index the tenant's job list (idempotent)."""
    db[JOBS].create_index([("tenant", 1), ("created", DESCENDING)], name="tenant_created")
