"""Device quarantine records, shared by every relay and web process (``quarantines``).

One document per device that was ever quarantined, keyed by its id::

    {_id: device, tenant, since, until, offences, reason, lifted}

A device is quarantined while ``until`` is in the future. Relays impose a quarantine
(:func:`impose`); the web app's broker auth refuses the device's logins while it holds
(:func:`active`); a tenant's admin may lift it (:func:`lift`), and it lifts itself at
``until``. Records are kept after expiry: the offence count makes repeat offenders'
periods grow (:func:`period`).

Writes are idempotent across processes: the first quarantine is a unique insert, a
later one a compare-and-set on the previous ``until``, so two relays seeing the same
flood impose it once (the loser's write matches nothing and it reports nothing new).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

COLLECTION = "quarantines"
REASON = "device_quarantined"  # the stable reason code of a refused login


@dataclass(frozen=True, slots=True)
class Quarantine:
    """One device's quarantine record (``until`` in epoch seconds)."""

    device: str
    tenant: str
    since: float
    until: float
    offences: int
    reason: str
    lifted: str | None = None  # who lifted it early, if anyone

    def holds(self, now: float) -> bool:
        """Whether the device is quarantined at ``now``."""
        return self.until > now

    def as_json(self, now: float) -> dict[str, Any]:
        """The API's view: whether it holds, until when, and how many offences."""
        return {
            "active": self.holds(now),
            "since": self.since,
            "until": self.until,
            "offences": self.offences,
            "reason": self.reason,
        }


def period(offences: int, base_s: float, max_s: float) -> float:
    """The length of a quarantine for the ``offences``-th offence: doubled each time, capped."""
    return min(max_s, base_s * 2.0 ** min(max(offences - 1, 0), 60))


def next_offence(previous: Quarantine | None, now: float, max_s: float) -> int:
    """The offence number of a quarantine imposed at ``now``: one more than the last,
    unless the last ended ``max_s`` or longer ago (then forgiven: 1 again)."""
    if previous is None or now - previous.until >= max_s:
        return 1
    return previous.offences + 1


def _from_doc(doc: dict[str, Any]) -> Quarantine:
    return Quarantine(
        doc["_id"],
        doc.get("tenant", ""),
        float(doc.get("since", 0.0)),
        float(doc.get("until", 0.0)),
        int(doc.get("offences", 1)),
        doc.get("reason", ""),
        doc.get("lifted"),
    )


def get(db: Database, device: str) -> Quarantine | None:
    """The device's record, active or not (None if it was never quarantined)."""
    doc = db[COLLECTION].find_one({"_id": device})
    return _from_doc(doc) if doc is not None else None


def active(db: Database, device: str, now: float) -> Quarantine | None:
    """The device's quarantine if it holds at ``now``."""
    found = get(db, device)
    return found if found is not None and found.holds(now) else None


def find_many(db: Database, devices: list[str]) -> dict[str, Quarantine]:
    """Records of these devices (those that have one)."""
    if not devices:
        return {}
    return {d["_id"]: _from_doc(d) for d in db[COLLECTION].find({"_id": {"$in": devices}})}


def impose(
    db: Database,
    device: str,
    tenant: str,
    now: float,
    base_s: float,
    max_s: float,
    reason: str,
) -> Quarantine | None:
    """Quarantine ``device`` from ``now``; None when it already is (or another process
    won the race to impose it): only the caller that gets a record counts it."""
    previous = get(db, device)
    if previous is not None and previous.holds(now):
        return None
    offences = next_offence(previous, now, max_s)
    until = now + period(offences, base_s, max_s)
    record = Quarantine(device, tenant, now, until, offences, reason)
    fields = {
        "tenant": tenant,
        "since": record.since,
        "until": record.until,
        "offences": offences,
        "reason": reason,
        "lifted": None,
    }
    if previous is None:
        try:
            db[COLLECTION].insert_one({"_id": device, **fields})
        except DuplicateKeyError:
            return None
        return record
    done = db[COLLECTION].update_one({"_id": device, "until": previous.until}, {"$set": fields})
    return record if done.matched_count == 1 else None


def lift(db: Database, device: str, now: float, by: str) -> bool:
    """End the device's quarantine now (an admin's action); False if none held."""
    done = db[COLLECTION].update_one(
        {"_id": device, "until": {"$gt": now}}, {"$set": {"until": now, "lifted": by}}
    )
    return done.matched_count == 1


def forget(db: Database, device: str) -> None:
    """Drop the device's record (the device was deleted)."""
    db[COLLECTION].delete_one({"_id": device})
