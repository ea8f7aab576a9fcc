"""Keep each user's ``user.<id>`` exchange bindings equal to their permissions.

The bindings a user should have follow from role, tenant and subscriptions
(:func:`fairway.domain.notify.binding_keys`). The user document records ``bindings`` (known
bound) and, while a change is under way, ``bindings_pending`` (possibly bound). A
crash between the broker change and the final write therefore leaves a record from
which the next sync binds everything that might be missing and unbinds everything
that might be left over: bind and unbind are idempotent at the broker.
"""

from __future__ import annotations

from pymongo.database import Database

from fairway.domain import notify
from fairway.storage import accounts


def sync_bindings(db: Database, channel: notify.Channel, user_id: str) -> list[str]:
    """Bind/unbind ``user.<id>`` to match the stored user; return the keys now bound."""
    doc = db[accounts.USERS].find_one({"_id": user_id})
    if doc is None:
        raise LookupError(f"unknown user {user_id!r}")
    bound = set(doc.get("bindings", []))
    maybe = bound | set(doc.get("bindings_pending", []))
    if not doc.get("enabled", True):
        notify.remove_user(channel, user_id)
        _record(db, user_id, set(), set())
        return []
    desired = notify.binding_keys(
        doc["role"], doc.get("tenant"), user_id, doc.get("subscriptions", [])
    )
    _record(db, user_id, bound, maybe | desired)
    notify.sync_user(channel, user_id, bound, bound | desired)  # binds what may be missing
    notify.sync_user(channel, user_id, maybe | desired, desired)  # unbinds what must go
    _record(db, user_id, desired, set())
    return sorted(desired)


def _record(db: Database, user_id: str, bound: set[str], pending: set[str]) -> None:
    db[accounts.USERS].update_one(
        {"_id": user_id},
        {"$set": {"bindings": sorted(bound), "bindings_pending": sorted(pending)}},
    )
