"""``device_state``: one document per device, derived from the readings the scheduler wrote.

``{_id: <device>, tenant, first_ts, last_ts, latest: {<stream>: {ts, id, values}}}``.
Every field only moves one way (``$min first_ts``, ``$max last_ts``, ``$max`` of each
stream's latest ``{ts, id, values}``, which BSON compares by ``ts`` first, then the
message id), so applying the same readings twice, late or out of order, changes nothing:
the state always equals the fold of every reading applied so far. Reads are by ``_id`` or
by ``tenant`` (equalities; never a scan of ``telemetry``).

One exception: retention deletes old readings and then moves ``first_ts`` up
(:func:`advance_first`), conditionally. ``first_ts`` is therefore a lower bound of the
device's stored readings (no reading is older; after retention it is the cutoff, not
the oldest reading kept), which is what history needs: it walks hours from
``floor_hour(first_ts)``. No ``first_ts``: the device has no readings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from fairway.kernel.contract import Written, WrittenBatch, split_reading_id
from fairway.storage.mongo import DEVICE_STATE

# FerretDB 1.24 on PostgreSQL hangs on an update command of ~50 statements (each holds a
# pool connection until the command ends): never send more than this many per bulk_write.
MAX_UPDATES_PER_BULK = 25


@dataclass(slots=True)
class DeviceDelta:
    """What a set of readings says about one device; merged, it is their fold."""

    tenant: str
    first_ts: datetime
    last_ts: datetime
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)

    def merge(self, other: DeviceDelta) -> None:
        """Fold ``other`` into this delta (same order-independent rules as the update)."""
        self.first_ts = min(self.first_ts, other.first_ts)
        self.last_ts = max(self.last_ts, other.last_ts)
        for stream, entry in other.latest.items():
            mine = self.latest.get(stream)
            if mine is None or _rank(entry) > _rank(mine):
                self.latest[stream] = entry


def _rank(entry: dict[str, Any]) -> tuple[datetime, str]:
    return entry["ts"], entry["id"]


def latest_entry(doc: dict[str, Any], message_id: str | None = None) -> dict[str, Any]:
    """A reading's ``latest.<stream>`` value; key order matters (BSON compares in order).

    ``message_id``: the reading's, if the caller has it already (else from ``_id``).
    """
    if message_id is None:
        message_id = split_reading_id(doc["_id"])[2]
    return {"ts": doc["ts"], "id": message_id, "values": doc["values"]}


def fold(docs: Iterable[dict[str, Any]]) -> dict[str, DeviceDelta]:
    """Per device, the delta of these stored-reading documents as read from the database
    (either shape: tenant, device and message id come from ``_id``)."""
    return fold_written((split_reading_id(doc["_id"]), doc) for doc in docs)


def fold_written(written: Iterable[Written]) -> dict[str, DeviceDelta]:
    """Per device, the delta of documents a writer has just written, each with the
    ``(tenant, device, message id)`` its ``_id`` was built from."""
    deltas: dict[str, DeviceDelta] = {}
    for (tenant, device, message_id), doc in written:
        ts, stream = doc["ts"], doc["stream"]
        known = deltas.get(device)
        if known is None:
            deltas[device] = DeviceDelta(tenant, ts, ts, {stream: latest_entry(doc, message_id)})
            continue
        # DeviceDelta.merge of a one-reading delta, without building it (every stored
        # reading passes here before its batch is acked).
        if ts < known.first_ts:
            known.first_ts = ts
        if ts > known.last_ts:
            known.last_ts = ts
        mine = known.latest.get(stream)
        # (ts, message_id) > _rank(mine), without building the two tuples
        if (
            mine is None
            or ts > (mine_ts := mine["ts"])
            or (ts == mine_ts and message_id > mine["id"])
        ):
            known.latest[stream] = {"ts": ts, "id": message_id, "values": doc["values"]}
    return deltas


def fold_batches(batches: Iterable[WrittenBatch], deltas: dict[str, DeviceDelta]) -> None:
    """Fold into ``deltas`` the batch documents a writer has just written: what
    :func:`fold_written` makes of their readings, with each document's tenant, device
    and stream taken once."""
    for tenant, device, stream, _received, members in batches:
        times = [ts for _, _, ts in members]
        first, last = min(times), max(times)
        # The latest reading: the newest ts, then the greatest message id (_rank's order).
        top = max((m for m in members if m[2] == last), key=lambda m: m[1]["id"])[1]
        entry = {"ts": last, "id": top["id"], "values": top["values"]}  # latest_entry's
        known = deltas.get(device)
        if known is None:
            deltas[device] = DeviceDelta(tenant, first, last, {stream: entry})
            continue
        if first < known.first_ts:
            known.first_ts = first
        if last > known.last_ts:
            known.last_ts = last
        mine = known.latest.get(stream)
        if mine is None or _rank(entry) > _rank(mine):
            known.latest[stream] = entry


def update_of(device: str, delta: DeviceDelta) -> UpdateOne:
    """The idempotent upsert that folds ``delta`` into the device's state."""
    newest: dict[str, Any] = {"last_ts": delta.last_ts}
    newest.update({f"latest.{stream}": entry for stream, entry in delta.latest.items()})
    return UpdateOne(
        {"_id": device},
        {"$set": {"tenant": delta.tenant}, "$min": {"first_ts": delta.first_ts}, "$max": newest},
        upsert=True,
    )


def apply(db: Database, deltas: dict[str, DeviceDelta]) -> None:
    """Fold ``deltas`` into ``device_state``, at most 25 updates per command; raise on error."""
    ops = [update_of(device, delta) for device, delta in deltas.items()]
    for start in range(0, len(ops), MAX_UPDATES_PER_BULK):
        # Ordered: FerretDB stops at the first failing statement anyway, and these
        # upserts never fail one by one; a raised error means "apply again later".
        db[DEVICE_STATE].bulk_write(ops[start : start + MAX_UPDATES_PER_BULK], ordered=True)


def get(db: Database, device: str) -> dict[str, Any] | None:
    """The device's state, or None if nothing was written for it yet."""
    return db[DEVICE_STATE].find_one({"_id": device})


def of_tenant(
    db: Database, tenant: str | None, fields: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """State of every device of ``tenant`` (None: all tenants), by device id; only
    ``fields`` (and ``_id``) if given."""
    query = {} if tenant is None else {"tenant": tenant}
    projection = None if fields is None else dict.fromkeys(fields, 1)
    return {doc["_id"]: doc for doc in db[DEVICE_STATE].find(query, projection)}


def advance_first(db: Database, device: str, seen: datetime, first_ts: datetime | None) -> bool:
    """After retention deleted the device's readings older than ``first_ts``: move
    ``first_ts`` up from ``seen`` to ``first_ts`` (None: remove it, the device has no
    readings left; ``last_ts`` and ``latest`` stay, the last reading ever stored).

    The only update that moves ``first_ts`` up, so it is conditional: it applies only if
    ``first_ts`` is still ``seen``. A reading folded in since (late data, a backfill) may
    have moved it down, and then the readings below must be walked again. Returns
    whether it applied.
    """
    change = {"$set": {"first_ts": first_ts}} if first_ts else {"$unset": {"first_ts": ""}}
    result = db[DEVICE_STATE].update_one({"_id": device, "first_ts": seen}, change)
    return result.modified_count == 1
