"""Fair dispatch of jobs between tenants: job records wait until their tenant's turn.

A job is recorded ``dispatch: "waiting"``. At most ``per_tenant`` jobs of a tenant are
*released* (in the ``cpu`` queue or running) at once: each holds a *dispatch slot*
(collection ``job_slots``, ``_id`` ``dispatch/<tenant>/<k>``, taken by a unique insert
like the quota slots of :mod:`fairway.storage.job_records`). The slot is freed with the
job's other slots when the job ends, and the tenant's next waiting job (oldest first)
takes it. Since every tenant has at most ``per_tenant`` jobs in the one FIFO ``cpu``
queue, a job released after another tenant's jobs ended queues behind the quiet
tenant's, not ahead of it: the tenants take turns.

FerretDB 1.24 applies an update as read, modify, write back, so two processes updating
one document can lose one's write, conditions included. Every contested decision is
therefore a unique insert (collection ``job_releases``), and each document is updated by
one party at a time:

* ``claim:<job>:<n>``: who takes the job out of waiting for its *n*-th release (a
  dispatcher, kind ``release``; or the web app withdrawing a job it could not queue,
  kind ``withdraw``). Its winner alone writes the record (``releasing``, ``release: n``)
  and the slot (``n``), then publishes the task with ``n``, then marks the *slot*
  ``published_at``; the record is not written after the publish (the worker writes it).
* ``fate:<job>:<n>``: ``started`` (inserted by the worker before it runs release *n*:
  :func:`start`) or ``superseded`` (inserted before release *n* is given up: a failed
  publish, or a recovery). A worker runs a message only if its fate is ``started``.

Releasing is safe to die at any step:

* after the slot, before the claim: the record is still waiting and its slot grows old;
  :func:`free_stale` takes the slot back after :data:`RELEASE_GRACE`;
* after the claim, before the record write: the record is waiting with an older
  number; the next claim skips a claim older than the grace (:func:`_claim_number`);
* after the record write, before or after the publish, before ``published_at``:
  :func:`stale_releases` finds the slot after the grace, and :func:`reclaim` supersedes
  release *n* (unless a worker started it: then it runs, once) and claims *n* + 1 in the
  same slot for a new publish; a message of release *n* that did reach the queue is
  then ignored by the worker that gets it.

A publish that failed: :func:`unclaim` supersedes *n* (or finds the worker started it:
the message got through after all), puts the record back to waiting and frees the slot.

Besides its tenant's dispatch slot a released job holds a ``cpu`` process slot
(:mod:`fairway.storage.job_pool`, taken after the dispatch slot and freed with it, on
every path above), so all tenants' released jobs together fit the worker processes.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from fairway.storage import job_pool
from fairway.storage.job_records import (
    JOBS,
    RELEASES,
    RELEASING,
    SLOTS,
    WAITING,
    as_utc,
    ended,
    release,
    take_slot,
)

DISPATCH = "dispatch"  # the slot scope
RELEASE, WITHDRAW = "release", "withdraw"  # claim kinds
STARTED, SUPERSEDED = "started", "superseded"  # fates
# A claim and a publish (with kombu's retries) take seconds; a claim older than this is
# presumed to have lost its process.
RELEASE_GRACE = timedelta(seconds=60)
CLAIM_TRIES = 5  # parallel dispatchers racing for the same waiting job
RELEASE_SCOPES = [DISPATCH, job_pool.POOL]  # the slots a released job holds


def _insert(db: Database, marker: dict[str, Any]) -> dict[str, Any] | None:
    """Insert a marker; None if this call inserted it, else the one already there."""
    try:
        db[RELEASES].insert_one(marker)
    except DuplicateKeyError:
        return db[RELEASES].find_one({"_id": marker["_id"]}) or {}
    return None


def _claim(db: Database, job: dict[str, Any], n: int, kind: str) -> dict[str, Any] | None:
    marker = {"_id": f"claim:{job['_id']}:{n}", "job": job["_id"], "n": n, "kind": kind,
              "at": datetime.now(UTC)}  # fmt: skip
    return _insert(db, marker)


def _claim_number(db: Database, job: dict[str, Any], kind: str) -> int | None:
    """Claim the job's next release number; None if a live claimant has it."""
    n = int(job.get("release", 0)) + 1
    cutoff = datetime.now(UTC) - RELEASE_GRACE
    for _ in range(CLAIM_TRIES):
        existing = _claim(db, job, n, kind)
        if existing is None:
            return n
        if not existing or as_utc(existing["at"]) >= cutoff:
            return None  # another process is releasing (or withdrawing) it right now
        n += 1  # a claim its process never followed up (it died): take the next number
    return None


def _fate(db: Database, job_id: str, n: int, fate: str) -> str:
    """Decide release ``n``'s fate if undecided; the fate it has."""
    marker = {"_id": f"fate:{job_id}:{n}", "job": job_id, "n": n, "fate": fate,
              "at": datetime.now(UTC)}  # fmt: skip
    existing = _insert(db, marker)
    return fate if existing is None else str(existing.get("fate", ""))


def start(db: Database, job_id: str, n: int) -> bool:
    """The worker is about to run release ``n``: True if it may (its fate is
    ``started``, now or by an earlier delivery of the same message), False if the
    release was superseded."""
    return _fate(db, job_id, n, STARTED) == STARTED


def free_stale(db: Database, held: dict[str, dict[str, Any]], ttl_s: float) -> set[str]:
    """Take back the dispatch slots among ``held`` whose jobs have ended (every slot of
    the job, see :func:`job_records.ended`) or are still ``waiting`` with a slot older
    than :data:`RELEASE_GRACE` (their dispatcher died before it claimed the job: only
    that slot); the jobs whose slots were freed."""
    gone = ended(db, held, ttl_s)
    for job_id in gone:
        release(db, job_id)
    cutoff = datetime.now(UTC) - RELEASE_GRACE
    old = {s["job"] for s in held.values() if as_utc(s["created"]) < cutoff} - gone
    if old:
        for d in db[JOBS].find({"_id": {"$in": list(old)}, "dispatch": WAITING}, {"_id": 1}):
            db[SLOTS].delete_many({"job": d["_id"], "scope": {"$in": RELEASE_SCOPES}})
            gone.add(d["_id"])
    return gone


def _releasing(db: Database, job: dict[str, Any], n: int, slot: str) -> dict[str, Any]:
    """Write the claimed release ``n`` to the record and the slot (the claimant alone)."""
    now = datetime.now(UTC)
    db[JOBS].update_one(
        {"_id": job["_id"]},
        {"$set": {"dispatch": RELEASING, "release": n, "releasing_at": now}},
    )
    db[SLOTS].update_one(
        {"_id": slot, "job": job["_id"]},
        {"$set": {"n": n, "claimed_at": now}, "$unset": {"published_at": ""}},
    )
    return {**job, "dispatch": RELEASING, "release": n, "slot": slot}


def slots_for(db: Database, tenant: str, per_tenant: int, idle_max: int) -> int:
    """How many dispatch slots ``tenant`` may hold now: its share, or while no other
    tenant has a job waiting, what ``idle_max`` leaves after the other tenants' slots
    (work-conserving: a tenant alone uses the idle workers).

    The extra slots are ordinary slots with higher numbers (``dispatch/<tenant>/<k>``,
    ``k`` >= the share), taken by the same unique insert and freed the same way, so
    the crash-safety of releases is unchanged. The check is not atomic with the insert:
    a tenant whose first job arrives just after finds its share free at once but may
    queue behind the borrowed jobs already released, at most ``idle_max`` - 1 of them
    (no preemption)."""
    if idle_max <= per_tenant:
        return per_tenant
    if db[JOBS].find_one({"dispatch": WAITING, "tenant": {"$ne": tenant}}, {"_id": 1}):
        return per_tenant
    others = db[SLOTS].count_documents({"scope": DISPATCH, "owner": {"$ne": tenant}})
    return max(per_tenant, idle_max - others)


def claim_next(
    db: Database,
    tenant: str,
    per_tenant: int,
    ttl_s: float,
    idle_max: int = 0,
    pool: job_pool.Pool | None = None,
) -> dict[str, Any] | None:
    """Take a dispatch slot of ``tenant`` (and a ``cpu`` process slot under ``pool``) for
    its oldest waiting job and claim the job's next release; the job record with
    ``release`` and ``slot``, or None (no job waiting, or no slot free: see
    :func:`claim_or_defer`). ``idle_max``: see :func:`slots_for`."""
    return claim_or_defer(db, tenant, per_tenant, ttl_s, idle_max, pool)[0]


def claim_or_defer(
    db: Database,
    tenant: str,
    per_tenant: int,
    ttl_s: float,
    idle_max: int = 0,
    pool: job_pool.Pool | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """:func:`claim_next`, and why a waiting job was not released (``tenant_share``,
    ``pool_full``, ``pool_reserved``; None when one was, or none waits)."""
    pool = pool or job_pool.Pool()
    for _ in range(CLAIM_TRIES):
        oldest = list(
            db[JOBS].find({"tenant": tenant, "dispatch": WAITING}).sort("created", 1).limit(1)
        )
        if not oldest:
            return None, None
        job = oldest[0]
        limit = slots_for(db, tenant, per_tenant, idle_max)
        # The pool by its count first: a full pool costs no dispatch slot taken and given back.
        mine = db[SLOTS].count_documents({"scope": DISPATCH, "owner": tenant})
        why = job_pool.refused(db, mine, pool, ttl_s, free_stale)
        if why is not None:  # the tenant's own share, when that is full too
            return None, job_pool.TENANT_SHARE if mine >= limit else why
        slot = take_slot(db, job["_id"], DISPATCH, tenant, limit, ttl_s, free_stale)
        if slot is None:
            return None, job_pool.TENANT_SHARE
        process = job_pool.take(db, job["_id"], pool, ttl_s, free_stale)
        if process is None and pool.processes > 0:  # a parallel dispatcher took the last
            db[SLOTS].delete_one({"_id": slot, "job": job["_id"]})
            return None, job_pool.POOL_FULL
        n = _claim_number(db, job, RELEASE)
        if n is not None:
            return _releasing(db, job, n, slot), None
        # Another dispatcher claimed it first (with slots of its own): give ours back.
        for mine_id in (slot, process):
            if mine_id is not None:
                db[SLOTS].delete_one({"_id": mine_id, "job": job["_id"]})
    return None, None


def mark_published(db: Database, job: dict[str, Any]) -> None:
    """The task of the job's claimed release is published (the broker confirmed it)."""
    db[SLOTS].update_one(
        {"_id": job["slot"], "job": job["_id"], "n": job["release"]},
        {"$set": {"published_at": datetime.now(UTC)}},
    )


def unclaim(db: Database, job: dict[str, Any]) -> bool:
    """The publish of the job's claimed release failed: supersede the release, put the
    job back to waiting and free its slot (True); False if a worker has started that
    release after all (the message got through): it stands, and the caller marks it
    published."""
    n = int(job["release"])
    if _fate(db, job["_id"], n, SUPERSEDED) == STARTED:
        return False
    # In this order: dying between the two leaves a waiting job holding a slot, which
    # free_stale takes back, never a released job without one.
    db[JOBS].update_one({"_id": job["_id"]}, {"$set": {"dispatch": WAITING}})
    db[SLOTS].delete_many({"job": job["_id"], "scope": {"$in": RELEASE_SCOPES}})
    return True


def stale_releases(db: Database, now: datetime | None = None) -> list[dict[str, Any]]:
    """Dispatch slots whose release was claimed longer than :data:`RELEASE_GRACE` ago
    and never confirmed published (their dispatcher died before or after publishing)."""
    cutoff = (now or datetime.now(UTC)) - RELEASE_GRACE
    return [
        s
        for s in db[SLOTS].find({"scope": DISPATCH})
        if "n" in s and "published_at" not in s and as_utc(s["claimed_at"]) < cutoff
    ]


def reclaim(db: Database, slot: dict[str, Any]) -> dict[str, Any] | None:
    """Supersede a stale release and claim the next in the same slot; the job record
    with its new ``release`` and ``slot``, or None (a worker started the old release,
    the job is gone or moved on, or another dispatcher reclaimed it first)."""
    job = db[JOBS].find_one({"_id": slot["job"]})
    n = int(slot["n"])
    if job is None or job.get("dispatch") != RELEASING or job.get("release") != n:
        return None
    if _fate(db, job["_id"], n, SUPERSEDED) != SUPERSEDED:
        return None  # started: it runs (or ran); its end frees the slot
    again = _claim_number(db, job, RELEASE)
    if again is None:
        return None
    return _releasing(db, job, again, slot["_id"])


def withdraw(db: Database, job_id: str) -> bool:
    """Delete a waiting job the web app could not queue (True), unless a dispatcher
    has claimed it meanwhile (False: it is being released)."""
    job = db[JOBS].find_one({"_id": job_id})
    if job is None or job.get("dispatch") != WAITING:
        return False
    if _claim(db, job, int(job.get("release", 0)) + 1, WITHDRAW) is not None:
        return False
    db[JOBS].delete_one({"_id": job_id})
    return True


def reclaim_slots(db: Database, ttl_s: float) -> int:
    """Free every dispatch slot :func:`free_stale` finds among those older than
    :data:`RELEASE_GRACE` (a job's end frees its slot at once: only a crash leaves one,
    so younger slots are not worth the look-ups); how many jobs it freed."""
    cutoff = datetime.now(UTC) - RELEASE_GRACE
    held = {
        d["_id"]: d
        for d in db[SLOTS].find({"scope": {"$in": RELEASE_SCOPES}})
        if as_utc(d["created"]) < cutoff
    }
    return len(free_stale(db, held, ttl_s)) if held else 0


def waiting(db: Database) -> dict[str, tuple[int, datetime]]:
    """Per tenant with waiting jobs: how many, and when the oldest was created."""
    out: dict[str, list[Any]] = defaultdict(lambda: [0, None])
    for doc in db[JOBS].find({"dispatch": WAITING}, {"tenant": 1, "created": 1}):
        entry = out[doc["tenant"]]
        entry[0] += 1
        created = as_utc(doc["created"])
        entry[1] = created if entry[1] is None else min(entry[1], created)
    return {tenant: (n, oldest) for tenant, (n, oldest) in out.items()}


def ahead(db: Database, job: dict[str, Any]) -> int:
    """How many of the job's tenant's waiting jobs are older than it: released first
    (a tenant's jobs go oldest first; other tenants' turns come in between)."""
    return db[JOBS].count_documents(
        {"tenant": job["tenant"], "dispatch": WAITING, "created": {"$lt": job["created"]}}
    )
