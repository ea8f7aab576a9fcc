"""The registry: tenants and their scheduling parameters, devices and their credentials.

Device passwords are stored as argon2 hashes. Connections are passed in.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher
from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from fairway.kernel.ids import check_new_id
from fairway.storage.mongo import DEVICES, TENANTS, AlreadyExists

_hasher = PasswordHasher()


@dataclass(frozen=True, slots=True)
class Tenant:
    """A provisioned tenant and its scheduling parameters."""

    id: str
    weight: int
    max_backlog: int


@dataclass(frozen=True, slots=True)
class Device:
    """A registry entry as the relay needs it."""

    id: str
    tenant: str
    enabled: bool
    tenant_known: bool = True


def create_tenant(db: Database, tenant_id: str, weight: int, max_backlog: int) -> Tenant:
    """Provision a tenant record; raise :class:`AlreadyExists` if the id is taken."""
    check_new_id("tenant", tenant_id)
    if weight < 1 or max_backlog < 1:
        raise ValueError("weight and max backlog must be at least 1")
    try:
        db[TENANTS].insert_one(
            {
                "_id": tenant_id,
                "weight": weight,
                "max_backlog": max_backlog,
                "created": datetime.now(UTC),
            }
        )
    except DuplicateKeyError:
        raise AlreadyExists(f"tenant {tenant_id!r} exists") from None
    return Tenant(tenant_id, weight, max_backlog)


def set_tenant_weight(db: Database, tenant_id: str, weight: int) -> bool:
    """Change a tenant's DRR weight; schedulers pick it up on their next refresh."""
    if weight < 1:
        raise ValueError("weight must be at least 1")
    return (
        db[TENANTS].update_one({"_id": tenant_id}, {"$set": {"weight": weight}}).matched_count == 1
    )


def tenant_document(db: Database, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's stored document."""
    return db[TENANTS].find_one({"_id": tenant_id})


def tenant_documents(db: Database, tenant_id: str | None = None) -> list[dict[str, Any]]:
    """Every tenant's document (or only ``tenant_id``'s), sorted by id."""
    query = {} if tenant_id is None else {"_id": tenant_id}
    return list(db[TENANTS].find(query).sort("_id", ASCENDING))


def update_tenant(db: Database, tenant_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Set ``changes`` on the tenant; its new document, or None if there is no such tenant."""
    if db[TENANTS].update_one({"_id": tenant_id}, {"$set": changes}).matched_count == 0:
        return None
    return tenant_document(db, tenant_id)


def list_tenants(db: Database) -> list[Tenant]:
    """Every tenant, sorted by id."""
    return [
        Tenant(doc["_id"], int(doc["weight"]), int(doc["max_backlog"]))
        for doc in db[TENANTS].find().sort("_id", ASCENDING)
    ]


def register_device(db: Database, tenant_id: str, device_id: str) -> dict[str, str]:
    """Register a device under a tenant and return its credentials (shown once)."""
    check_new_id("device", device_id)
    if db[TENANTS].count_documents({"_id": tenant_id}, limit=1) == 0:
        raise LookupError(f"unknown tenant {tenant_id!r}")
    password = secrets.token_urlsafe(24)
    try:
        db[DEVICES].insert_one(
            {
                "_id": device_id,
                "tenant": tenant_id,
                "enabled": True,
                "password_hash": _hasher.hash(password),
                "created": datetime.now(UTC),
            }
        )
    except DuplicateKeyError:
        raise AlreadyExists(f"device {device_id!r} exists") from None
    return {"tenant": tenant_id, "device": device_id, "username": device_id, "password": password}


def verify_device_password(db: Database, device_id: str, password: str) -> bool:
    """True when ``password`` is the enabled device's current credential."""
    doc = db[DEVICES].find_one({"_id": device_id}, {"password_hash": 1, "enabled": 1})
    if doc is None or not doc.get("enabled", False):
        return False
    try:
        return _hasher.verify(doc["password_hash"], password)
    except Exception:  # argon2 raises several mismatch/invalid-hash types
        return False


def rotate_device_password(db: Database, device_id: str) -> str | None:
    """Give the device a new password (returned once); None if the device is unknown."""
    password = secrets.token_urlsafe(24)
    result = db[DEVICES].update_one(
        {"_id": device_id}, {"$set": {"password_hash": _hasher.hash(password)}}
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
    docs = list(db[DEVICES].find({"_id": {"$in": device_ids}}, {"tenant": 1, "enabled": 1}))
    tenants = sorted({doc["tenant"] for doc in docs})
    live = {doc["_id"] for doc in db[TENANTS].find({"_id": {"$in": tenants}}, {"_id": 1})}
    found: dict[str, Device | None] = dict.fromkeys(device_ids)
    for doc in docs:
        found[doc["_id"]] = Device(
            doc["_id"], doc["tenant"], bool(doc["enabled"]), doc["tenant"] in live
        )
    return found
