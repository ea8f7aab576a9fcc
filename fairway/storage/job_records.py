"""Job records (collection ``jobs``): who asked for what, so results stay in the tenant.

``{_id: task id, tenant, user, kind, params, created}``, plus ``deliveries`` and
``ends`` (see :func:`count_delivery`) and ``failure: {reason, message}`` when the
worker refused to run it. The task's state, progress and result live in Celery's
result collection (``celery_taskmeta``) under the same id.

**Quotas (collection ``job_slots``).** A user may have ``per_user`` unfinished
(queued or running) jobs, a tenant ``per_tenant``. Each unfinished job holds one
*slot* of its user and one of its tenant: a document whose ``_id`` is
``user/<user>/<k>`` or ``tenant/<tenant>/<k>`` with ``k`` below the limit.
:func:`reserve` takes a free slot by inserting it; the unique ``_id`` makes the insert
the atomic step, on MongoDB and on FerretDB alike (no transactions needed), so
parallel submissions can never hold more slots than the limit. The task frees its
slots when it ends (:func:`release`); a slot whose job has ended anyway (its result
is stored, its record is gone or older than the job TTL) is taken back when a
reservation finds every slot busy, so a lost release never locks anyone out for long.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import DESCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

JOBS = "jobs"
SLOTS = "job_slots"
RELEASES = "job_releases"  # fair dispatch's claim and fate markers (job_dispatch)
TASKMETA = "celery_taskmeta"  # Celery's MongoDB result backend (tasks.celery_app)
REPORT, EXPORT = "report", "export"
USER, TENANT = "user", "tenant"
ENDED = ("SUCCESS", "FAILURE", "REVOKED")  # Celery states after which a job is finished
WORKER_LOST = "worker_lost"
# Fair dispatch (fairway.storage.job_dispatch): a job record's ``dispatch`` field.
WAITING, RELEASING, STARTED = "waiting", "releasing", "started"
SLOT_GRACE = timedelta(seconds=60)  # a slot may precede its job record by this much


class QuotaExceeded(Exception):
    """The user or the tenant already has as many unfinished jobs as allowed."""

    def __init__(self, scope: str, limit: int) -> None:
        self.scope, self.limit = scope, limit
        who = "you have" if scope == USER else "your tenant has"
        setting = "FAIRWAY_JOBS_MAX_PER_USER" if scope == USER else "FAIRWAY_JOBS_MAX_PER_TENANT"
        super().__init__(
            f"{who} {limit} unfinished jobs, the most allowed ({setting}); "
            "wait for one to finish and try again"
        )


def create_job(
    db: Database,
    job_id: str,
    tenant: str,
    user: str,
    kind: str,
    params: dict[str, Any],
    dispatch: str | None = None,
) -> dict[str, Any]:
    """Record a job before its task is sent (``dispatch="waiting"``: it waits for
    :mod:`fairway.storage.job_dispatch` to release it)."""
    doc: dict[str, Any] = {
        "_id": job_id,
        "tenant": tenant,
        "user": user,
        "kind": kind,
        "params": params,
        "created": datetime.now(UTC),
    }
    if dispatch is not None:
        doc["dispatch"] = dispatch
        doc["release"] = 0
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
    """Remove job records (and any quota slots they still hold); return how many went."""
    if not job_ids:
        return 0
    db[SLOTS].delete_many({"job": {"$in": job_ids}})
    db[RELEASES].delete_many({"job": {"$in": job_ids}})
    return db[JOBS].delete_many({"_id": {"$in": job_ids}}).deleted_count


# -- quotas -------------------------------------------------------------------------
def _slot_id(scope: str, owner: str, k: int) -> str:
    return f"{scope}/{owner}/{k}"


def ended(db: Database, held: dict[str, dict[str, Any]], ttl_s: float) -> set[str]:
    """Which jobs holding the slots ``held`` have finished: their result is stored, their
    record is older than ``ttl_s``, or it is gone (once the slot is older than
    ``SLOT_GRACE``: a reservation precedes its record by moments)."""
    job_ids = list({slot["job"] for slot in held.values()})
    now = datetime.now(UTC)
    ended = {
        doc["_id"]
        for doc in db[TASKMETA].find(
            {"_id": {"$in": job_ids}, "status": {"$in": list(ENDED)}}, {"_id": 1}
        )
    }
    created = {
        doc["_id"]: as_utc(doc["created"])
        for doc in db[JOBS].find({"_id": {"$in": job_ids}}, {"_id": 1, "created": 1})
    }
    expired = {job for job, at in created.items() if at < now - timedelta(seconds=ttl_s)}
    gone = {
        slot["job"]
        for slot in held.values()
        if slot["job"] not in created and as_utc(slot["created"]) < now - SLOT_GRACE
    }
    return ended | expired | gone


def as_utc(at: datetime) -> datetime:
    """A stored time as an aware UTC datetime (the driver may hand back naive ones)."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


Free = Callable[[Database, dict[str, dict[str, Any]], float], set[str]]


def free_ended(db: Database, held: dict[str, dict[str, Any]], ttl_s: float) -> set[str]:
    """Free every slot of the jobs among ``held``'s holders that have ended; those jobs."""
    gone = ended(db, held, ttl_s)
    for job in gone:
        release(db, job)  # every slot of the job: its user's and its tenant's
    return gone


def take_slot(
    db: Database,
    job_id: str,
    scope: str,
    owner: str,
    limit: int,
    ttl_s: float,
    free: Free | None = None,
) -> str | None:
    """Insert one free slot of ``owner`` for ``job_id``; its ``_id``, or None if all busy.
    ``free``: takes back stale slots when all are busy, returning their jobs (default
    :func:`free_ended`)."""
    ids = [_slot_id(scope, owner, k) for k in range(limit)]
    for reclaim in (False, True):
        held = {d["_id"]: d for d in db[SLOTS].find({"_id": {"$in": ids}})}
        if reclaim and held:
            # No slot was free: give back those whose job has ended without a release.
            gone = (free or free_ended)(db, held, ttl_s)
            held = {slot: doc for slot, doc in held.items() if doc["job"] not in gone}
        for slot in ids:
            if slot in held:
                continue
            doc = {"_id": slot, "job": job_id, "scope": scope, "owner": owner,
                   "created": datetime.now(UTC)}  # fmt: skip
            try:
                db[SLOTS].insert_one(doc)
            except DuplicateKeyError:  # a parallel submission took it first: try the next
                continue
            return slot
    return None


def reserve(
    db: Database,
    job_id: str,
    tenant: str,
    user: str,
    per_user: int,
    per_tenant: int,
    ttl_s: float,
) -> None:
    """Take a quota slot of ``user`` and one of ``tenant`` for ``job_id``, or raise
    :class:`QuotaExceeded` (holding none). ``ttl_s``: a job recorded longer ago than
    this has ended whatever its state (``FAIRWAY_JOB_TTL_S``)."""
    if take_slot(db, job_id, USER, user, per_user, ttl_s) is None:
        raise QuotaExceeded(USER, per_user)
    if take_slot(db, job_id, TENANT, tenant, per_tenant, ttl_s) is None:
        release(db, job_id)
        raise QuotaExceeded(TENANT, per_tenant)


def release(db: Database, job_id: str) -> int:
    """Free the quota slots of a job that has ended (or was never queued); idempotent."""
    return db[SLOTS].delete_many({"job": job_id}).deleted_count


def unfinished(db: Database, scope: str, owner: str) -> int:
    """How many quota slots ``owner`` (a user or tenant id) holds."""
    return db[SLOTS].count_documents({"scope": scope, "owner": owner})


# -- deliveries -----------------------------------------------------------------------
def count_delivery(db: Database, job_id: str, started: bool = False) -> int | None:
    """Count a delivery of the job's task as it starts; return how many earlier
    deliveries never ended (their worker process was lost), or None without a record.

    ``deliveries`` is incremented at each start, ``ends`` when a delivery returns
    (:func:`count_end`), whatever its outcome: the difference is the number of
    deliveries that took their worker down with them. ``started``: also mark a fairly
    dispatched job ``dispatch: "started"``.
    """
    update: dict[str, Any] = {"$inc": {"deliveries": 1}}
    if started:
        update["$set"] = {"dispatch": STARTED}
    doc = db[JOBS].find_one_and_update(
        {"_id": job_id},
        update,
        return_document=ReturnDocument.AFTER,  # no projection: FerretDB 1.24 refuses it
    )
    if doc is None:
        return None
    return max(0, int(doc.get("deliveries", 0)) - int(doc.get("ends", 0)) - 1)


def count_end(db: Database, job_id: str) -> None:
    """A delivery of the job's task returned (success, failure or retry)."""
    db[JOBS].update_one({"_id": job_id}, {"$inc": {"ends": 1}})


def mark_failed(db: Database, job_id: str, reason: str, message: str) -> None:
    """Record why the worker failed a job without running it (a stable reason code)."""
    db[JOBS].update_one(
        {"_id": job_id},
        {"$set": {"failure": {"reason": reason, "message": message, "at": datetime.now(UTC)}}},
    )


def ensure_indexes(db: Database) -> None:
    """Index the tenant's job list and the waiting jobs (idempotent). ``job_slots`` holds
    only unfinished jobs' slots: small enough to scan, and no collection to create as a
    worker starts."""
    db[JOBS].create_index([("tenant", 1), ("created", DESCENDING)], name="tenant_created")
    db[JOBS].create_index(
        [("dispatch", 1), ("tenant", 1), ("created", 1)], name="dispatch_tenant_created"
    )
