"""The registry: tenants and their scheduling parameters, devices and their credentials.

Device passwords are 192-bit random tokens, so a keyed hash is as strong as a slow one
and costs microseconds instead of argon2's 190 ms of CPU per login: they are stored as
``hmac-sha256$<hex>`` of the device id and password under a server key
(``FAIRWAY_DEVICE_HASH_KEY``, or derived from ``FAIRWAY_SECRET_KEY``) and compared in
constant time. Hashes written before (argon2) still verify and are replaced by the keyed
hash on the next successful login; without a key (a CLI without the secret) devices
get argon2 hashes, migrated the same way. Connections are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher
from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from fairway.kernel.ids import check_new_id
from fairway.storage.mongo import (
    DEVICES,
    DUPLICATE_KEY,
    TENANT_REMOVALS,
    TENANTS,
    VERSIONS,
    AlreadyExists,
    find_by_ids,
)

_hasher = PasswordHasher()
KEYED_PREFIX = "hmac-sha256$"
# Compared against when the device is unknown or disabled: the same work as a real check.
_UNKNOWN = KEYED_PREFIX + "0" * 64
# A tenant plan's accepted readings per second (0: unlimited) and burst, at most.
MAX_TENANT_RATE = 10_000_000
MAX_TENANT_BURST = 100_000_000


def device_hash_key(explicit_key: str, secret_key: str) -> bytes | None:
    """The key of device password hashes: ``explicit_key``, else one derived from
    ``secret_key`` (so it is not the key that signs sessions), else None (argon2)."""
    if explicit_key:
        return explicit_key.encode()
    if len(secret_key) >= 16:
        return hmac.new(secret_key.encode(), b"fairway device password key v1", "sha256").digest()
    return None


def keyed_hash(key: bytes, device_id: str, password: str) -> str:
    """``hmac-sha256$<hex>`` of the device id and password (the id binds it to one device)."""
    message = device_id.encode() + b"\0" + password.encode()
    return KEYED_PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()


def _password_hash(key: bytes | None, device_id: str, password: str) -> str:
    return keyed_hash(key, device_id, password) if key else _hasher.hash(password)


@dataclass(frozen=True, slots=True)
class Credential:
    """What a device login is checked against (None fields: no such device)."""

    device: str
    password_hash: str | None
    enabled: bool
    tenant: str | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A checked login: ``ok``, why not (``reason``), and whether the hash should be
    migrated to the keyed form."""

    ok: bool
    reason: str  # "ok", "unknown_device", "device_disabled", "bad_password"
    migrate: bool = False


@dataclass(frozen=True, slots=True)
class Tenant:
    """A provisioned tenant and its scheduling parameters."""

    id: str
    weight: int
    max_backlog: int
    # The tenant's plan: accepted readings per second in each relay (0: unlimited) and
    # its burst; None: FAIRWAY_TENANT_RATE / FAIRWAY_TENANT_BURST (ingest/ratelimit.py).
    max_rate: float | None = None
    max_burst: float | None = None


def tenant_of(doc: dict[str, Any]) -> Tenant:
    """A stored tenant record as a :class:`Tenant` (records without a plan: None)."""
    rate, burst = doc.get("max_rate"), doc.get("max_burst")
    return Tenant(
        doc["_id"],
        int(doc["weight"]),
        int(doc["max_backlog"]),
        None if rate is None else float(rate),
        None if burst is None else float(burst),
    )


def check_plan(max_rate: float | None, max_burst: float | None) -> None:
    """Raise ``ValueError`` unless the rate is 0..MAX_TENANT_RATE and the burst
    1..MAX_TENANT_BURST (None: the default), both finite numbers."""
    for name, value, low, high in (
        ("max_rate", max_rate, 0, MAX_TENANT_RATE),
        ("max_burst", max_burst, 1, MAX_TENANT_BURST),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"{name} must be a finite number between {low} and {high:,}")


@dataclass(frozen=True, slots=True)
class Device:
    """A registry entry as the relay needs it."""

    id: str
    tenant: str
    enabled: bool
    tenant_known: bool = True


def tenant_record(
    tenant_id: str,
    weight: int,
    max_backlog: int,
    rev: int = 0,
    max_rate: float | None = None,
    max_burst: float | None = None,
) -> dict[str, Any]:
    """The stored document of a new tenant (one shape for single and bulk provisioning);
    ``rev`` from :func:`next_tenants_rev`, taken just before the record is written. A plan
    left None is not stored (the tenant takes the defaults)."""
    record: dict[str, Any] = {
        "_id": tenant_id,
        "weight": weight,
        "max_backlog": max_backlog,
        "created": datetime.now(UTC),
        "rev": rev,
    }
    if max_rate is not None:
        record["max_rate"] = max_rate
    if max_burst is not None:
        record["max_burst"] = max_burst
    return record


# -- tenant changes, versioned ---------------------------------------------------------
def next_tenants_rev(db: Database) -> int:
    """Take the next tenant revision: every write of a tenant record stamps one as ``rev``
    (before writing), so :func:`tenants_changed_since` finds what changed."""
    doc = db[VERSIONS].find_one_and_update(
        {"_id": TENANTS},
        {"$inc": {"version": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:  # cannot happen with upsert; a clear error if a server disagrees
        raise RuntimeError("tenant revision counter not returned")
    return int(doc["version"])


def tenants_version(db: Database) -> int:
    """The last tenant revision taken (0: none yet); one read by ``_id``."""
    doc = db[VERSIONS].find_one({"_id": TENANTS})
    return int(doc["version"]) if doc else 0


def tenants_changed_since(db: Database, rev: int) -> tuple[list[Tenant], set[str]]:
    """Tenants whose record was written with a revision above ``rev``, and the ids of
    tenants removed with a revision above ``rev`` (and not created again since)."""
    tenants, revs = [], {}
    for doc in db[TENANTS].find({"rev": {"$gt": rev}}).sort("_id", ASCENDING):
        tenants.append(tenant_of(doc))
        revs[doc["_id"]] = int(doc["rev"])
    removed = {
        doc["_id"]
        for doc in db[TENANT_REMOVALS].find({"rev": {"$gt": rev}})
        if revs.get(doc["_id"], 0) < int(doc["rev"])
    }
    return tenants, removed


def remove_tenant(db: Database, tenant_id: str) -> bool:
    """Remove a tenant's record; False if there is none.

    The removal takes a revision like any other tenant write and leaves a tombstone
    (``tenant_removals``: id and revision) so watchers learn it from the changes alone.
    The tombstone is written first: a removal interrupted in between is seen as a
    removal by watchers until their next full read finds the record again. The tenant's
    queues, devices and data are left as they are (docs/architecture.md, "Removing a
    tenant").
    """
    if db[TENANTS].count_documents({"_id": tenant_id}, limit=1) == 0:
        return False
    rev = next_tenants_rev(db)
    db[TENANT_REMOVALS].replace_one(
        {"_id": tenant_id}, {"_id": tenant_id, "rev": rev, "at": datetime.now(UTC)}, upsert=True
    )
    return db[TENANTS].delete_one({"_id": tenant_id}).deleted_count == 1


def device_record(
    tenant_id: str, device_id: str, key: bytes | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """A new device's stored document and its credentials (the password, shown once)."""
    password = secrets.token_urlsafe(24)
    doc = {
        "_id": device_id,
        "tenant": tenant_id,
        "enabled": True,
        "password_hash": _password_hash(key, device_id, password),
        "created": datetime.now(UTC),
    }
    return doc, {
        "tenant": tenant_id,
        "device": device_id,
        "username": device_id,
        "password": password,
    }


def create_tenant(
    db: Database,
    tenant_id: str,
    weight: int,
    max_backlog: int,
    max_rate: float | None = None,
    max_burst: float | None = None,
) -> Tenant:
    """Provision a tenant record; raise :class:`AlreadyExists` if the id is taken."""
    check_new_id("tenant", tenant_id)
    if weight < 1 or max_backlog < 1:
        raise ValueError("weight and max backlog must be at least 1")
    check_plan(max_rate, max_burst)
    record = tenant_record(
        tenant_id, weight, max_backlog, next_tenants_rev(db), max_rate, max_burst
    )
    try:
        db[TENANTS].insert_one(record)
    except DuplicateKeyError:
        raise AlreadyExists(f"tenant {tenant_id!r} exists") from None
    return Tenant(tenant_id, weight, max_backlog, max_rate, max_burst)


def set_tenant_weight(db: Database, tenant_id: str, weight: int) -> bool:
    """Change a tenant's DRR weight; schedulers pick it up on their next refresh."""
    if weight < 1:
        raise ValueError("weight must be at least 1")
    changes = {"weight": weight, "rev": next_tenants_rev(db)}
    return db[TENANTS].update_one({"_id": tenant_id}, {"$set": changes}).matched_count == 1


def tenant_document(db: Database, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's stored document."""
    return db[TENANTS].find_one({"_id": tenant_id})


def tenant_documents(db: Database, tenant_id: str | None = None) -> list[dict[str, Any]]:
    """Every tenant's document (or only ``tenant_id``'s), sorted by id."""
    query = {} if tenant_id is None else {"_id": tenant_id}
    return list(db[TENANTS].find(query).sort("_id", ASCENDING))


def update_tenant(
    db: Database, tenant_id: str, changes: dict[str, Any], unset: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """Set ``changes`` on the tenant and remove the ``unset`` fields (a plan back to the
    defaults); its new document, or None if there is no such tenant."""
    check_plan(changes.get("max_rate"), changes.get("max_burst"))
    update: dict[str, Any] = {"$set": {**changes, "rev": next_tenants_rev(db)}}
    if unset:
        update["$unset"] = dict.fromkeys(unset, "")
    if db[TENANTS].update_one({"_id": tenant_id}, update).matched_count == 0:
        return None
    return tenant_document(db, tenant_id)


def list_tenants(db: Database) -> list[Tenant]:
    """Every tenant, sorted by id."""
    return [tenant_of(doc) for doc in db[TENANTS].find().sort("_id", ASCENDING)]


def register_device(
    db: Database, tenant_id: str, device_id: str, key: bytes | None = None
) -> dict[str, str]:
    """Register a device under a tenant and return its credentials (shown once).

    With ``key`` the password is stored as a keyed hash, else with argon2 (migrated to
    the keyed hash on the first login checked with a key)."""
    check_new_id("device", device_id)
    if db[TENANTS].count_documents({"_id": tenant_id}, limit=1) == 0:
        raise LookupError(f"unknown tenant {tenant_id!r}")
    doc, credentials = device_record(tenant_id, device_id, key)
    try:
        db[DEVICES].insert_one(doc)
    except DuplicateKeyError:
        raise AlreadyExists(f"device {device_id!r} exists") from None
    return credentials


def device_credential(db: Database, device_id: str) -> Credential:
    """The stored hash, state and tenant of ``device_id`` (one read; cacheable)."""
    doc = db[DEVICES].find_one({"_id": device_id}, {"password_hash": 1, "enabled": 1, "tenant": 1})
    if doc is None:
        return Credential(device_id, None, False, None)
    return Credential(
        device_id, doc.get("password_hash"), bool(doc.get("enabled", False)), doc.get("tenant")
    )


def check_password(credential: Credential, password: str, key: bytes | None) -> Verdict:
    """Check ``password`` against ``credential`` without touching the database.

    A keyed hash is compared in constant time; an unknown or disabled device is compared
    against a dummy keyed hash, so it costs the same as a known one. Only a legacy argon2
    hash costs argon2 (once per device: ``migrate`` asks the caller to replace it).
    """
    stored = credential.password_hash
    if stored is None or not credential.enabled:
        _equal(_UNKNOWN, keyed_hash(key or b"\0", credential.device, password))  # same work
        return Verdict(False, "unknown_device" if stored is None else "device_disabled")
    if stored.startswith(KEYED_PREFIX):
        ok = key is not None and _equal(stored, keyed_hash(key, credential.device, password))
        return Verdict(True, "ok") if ok else Verdict(False, "bad_password")
    try:
        ok = _hasher.verify(stored, password)
    except Exception:  # argon2 raises several mismatch/invalid-hash types
        ok = False
    return Verdict(True, "ok", migrate=key is not None) if ok else Verdict(False, "bad_password")


def _equal(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def migrate_password_hash(db: Database, credential: Credential, password: str, key: bytes) -> bool:
    """Replace a verified legacy hash by the keyed one (only if it is still the same)."""
    result = db[DEVICES].update_one(
        {"_id": credential.device, "password_hash": credential.password_hash},
        {"$set": {"password_hash": keyed_hash(key, credential.device, password)}},
    )
    return result.modified_count == 1


def verify_device_password(
    db: Database, device_id: str, password: str, key: bytes | None = None
) -> bool:
    """True when ``password`` is the enabled device's current credential (migrating a
    legacy argon2 hash to the keyed hash when ``key`` is given)."""
    credential = device_credential(db, device_id)
    verdict = check_password(credential, password, key)
    if verdict.migrate and key is not None:
        migrate_password_hash(db, credential, password, key)
    return verdict.ok


def rotate_device_password(db: Database, device_id: str, key: bytes | None = None) -> str | None:
    """Give the device a new password (returned once); None if the device is unknown."""
    password = secrets.token_urlsafe(24)
    result = db[DEVICES].update_one(
        {"_id": device_id}, {"$set": {"password_hash": _password_hash(key, device_id, password)}}
    )
    return password if result.matched_count == 1 else None


def device_document(db: Database, device_id: str) -> dict[str, Any] | None:
    """The device's registry entry without its password hash."""
    return db[DEVICES].find_one({"_id": device_id}, {"password_hash": 0})


def set_device_enabled(db: Database, device_id: str, enabled: bool) -> bool:
    """Enable or disable a device; relays notice within the registry cache TTL."""
    result = db[DEVICES].update_one({"_id": device_id}, {"$set": {"enabled": enabled}})
    return result.matched_count == 1


def list_devices(db: Database, tenant_id: str | None = None) -> list[Device]:
    """Devices, optionally of one tenant, sorted by id."""
    query = {} if tenant_id is None else {"tenant": tenant_id}
    return [
        Device(doc["_id"], doc["tenant"], bool(doc["enabled"]))
        for doc in db[DEVICES].find(query, {"tenant": 1, "enabled": 1}).sort("_id", ASCENDING)
    ]


def find_devices(db: Database, device_ids: list[str]) -> dict[str, Device | None]:
    """Registry lookup for many ids at once; unknown ids map to None.

    A device whose tenant has been removed comes back with ``tenant_known=False``.
    """
    docs = find_by_ids(db[DEVICES], device_ids, {"tenant": 1, "enabled": 1})
    tenants = sorted({doc["tenant"] for doc in docs})
    live = {doc["_id"] for doc in find_by_ids(db[TENANTS], tenants, {"_id": 1})}
    found: dict[str, Device | None] = dict.fromkeys(device_ids)
    for doc in docs:
        found[doc["_id"]] = Device(
            doc["_id"], doc["tenant"], bool(doc["enabled"]), doc["tenant"] in live
        )
    return found


def insert_new(db: Database, collection: str, docs: list[dict[str, Any]]) -> set[str]:
    """Insert ``docs`` (unordered); the ``_id`` of each one refused because it is taken.

    For bulk provisioning: the caller sends small lists (FerretDB prefers small bulks).
    Any error other than a duplicate id is raised.
    """
    if not docs:
        return set()
    try:
        db[collection].insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return {docs[e["index"]]["_id"] for e in errors}
    return set()


def existing(db: Database, collection: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """``_id`` -> stored document of those of ``ids`` that exist in ``collection`` (one query)."""
    if not ids:
        return {}
    docs = db[collection].find({"_id": {"$in": ids}})
    return {doc["_id"]: doc for doc in docs}
