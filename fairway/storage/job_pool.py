"""The ``cpu`` worker processes as slots shared by every tenant's released jobs.

Fair dispatch (:mod:`fairway.storage.job_dispatch`) bounds each tenant's released jobs
by its share. This module bounds all of them together by the deployment's ``cpu``
processes (``FAIRWAY_JOBS_CPU_PROCESSES``), so a released job finds a free process
instead of queueing in ``cpu`` behind another tenant's, and keeps the last
``FAIRWAY_JOBS_RESERVED_PROCESSES`` free processes for tenants with no job released:
a tenant already running a job never takes them, so a tenant that starts one while
another floods finds a process free. A job no process is free for waits in the
database with its reason (:data:`POOL_FULL`, :data:`POOL_RESERVED`; its tenant's own
share is :data:`TENANT_SHARE`), and when a process frees the tenant whose turn it is
goes first (:func:`turn_order`: fewest jobs released, then longest since its last
release).

A released job holds one *pool slot* (collection ``job_slots``, ``_id``
``pool/cpu/<k>``, ``k`` below the processes), taken by a unique insert like every slot
(:func:`fairway.storage.job_records.take_slot`), so the processes are never
over-booked, and freed with the job's other slots when it ends. The reserve is a count
taken before the insert, not atomic with it: two tenants that each already run a job,
releasing at the same moment, can both pass it and use one reserved process between
them; a newcomer then waits for the first job to end, as without a reserve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo.database import Database

from fairway.storage.job_records import SLOTS, Free, as_utc, take_slot

POOL, OWNER = "pool", "cpu"  # the slot scope and its one owner: pool/cpu/<k>
TURNS = "job_turns"  # per tenant: when its last job was released ({_id: tenant, at})
# Why a waiting job was not released (stable reason codes, counted per tenant).
TENANT_SHARE = "tenant_share"  # the tenant has its share released
POOL_FULL = "pool_full"  # every cpu process holds a released job
POOL_RESERVED = "pool_reserved"  # the free processes are kept for tenants with none
NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Pool:
    """The ``cpu`` processes (0: no bound, as before this module) and the reserve."""

    processes: int = 0
    reserved: int = 0


def refusal(held: int, tenant_released: int, pool: Pool) -> str | None:
    """Why a job of a tenant with ``tenant_released`` jobs released may not take a
    process while ``held`` are taken; None if it may."""
    if pool.processes <= 0:
        return None
    if held >= pool.processes:
        return POOL_FULL
    if tenant_released > 0 and held >= pool.processes - pool.reserved:
        return POOL_RESERVED
    return None


def refused(db: Database, tenant_released: int, pool: Pool, ttl_s: float, free: Free) -> str | None:
    """Why no process may be taken for a job of a tenant with ``tenant_released`` jobs
    released, by the count of processes held; None if one may (or without a bound).
    Asked before any slot is taken, so a full pool costs no insert; when full by the
    count, ``free`` first takes back the slots of jobs that ended without freeing them."""
    if pool.processes <= 0:
        return None
    held = db[SLOTS].count_documents({"scope": POOL})
    why = refusal(held, tenant_released, pool)
    if why == POOL_FULL:
        slots = {d["_id"]: d for d in db[SLOTS].find({"scope": POOL})}
        if slots and free(db, slots, ttl_s):
            held = db[SLOTS].count_documents({"scope": POOL})
            why = refusal(held, tenant_released, pool)
    return why


def take(db: Database, job_id: str, pool: Pool, ttl_s: float, free: Free) -> str | None:
    """Take a process for ``job_id`` once :func:`refused` let it: its slot id, or None
    (without a bound, or a parallel dispatcher took the last one first: the unique
    insert bounds the pool where the count did not)."""
    if pool.processes <= 0:
        return None
    return take_slot(db, job_id, POOL, OWNER, pool.processes, ttl_s, free)


def note_turn(db: Database, tenant: str, at: datetime | None = None) -> None:
    """Remember that ``tenant`` just had a job released (for :func:`turn_order`)."""
    db[TURNS].update_one({"_id": tenant}, {"$set": {"at": at or datetime.now(UTC)}}, upsert=True)


def last_turns(db: Database) -> dict[str, datetime]:
    """When each tenant last had a job released (one document per tenant ever)."""
    return {d["_id"]: as_utc(d["at"]) for d in db[TURNS].find({}, {"at": 1})}


def turn_order(
    waiting: Mapping[str, tuple[int, datetime]],
    released: Mapping[str, int],
    last: Mapping[str, datetime],
) -> list[str]:
    """The tenants with waiting jobs in the order they get a free process: fewest jobs
    released first, then the longest since their last release, then the oldest waiting
    job. (Not the oldest job first: a flooding tenant's waiting jobs are always older
    than a newcomer's.)"""

    def key(tenant: str) -> tuple[int, datetime, datetime]:
        return released.get(tenant, 0), last.get(tenant, NEVER), waiting[tenant][1]

    return sorted(waiting, key=key)


def released_by_tenant(db: Database, scope: str) -> dict[str, int]:
    """How many slots of ``scope`` (the tenants' dispatch slots) each tenant holds."""
    out: dict[str, int] = {}
    for d in db[SLOTS].find({"scope": scope}, {"owner": 1}):
        out[d["owner"]] = out.get(d["owner"], 0) + 1
    return out
