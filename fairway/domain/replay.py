"""Replay: re-submit an archived rejection, once its cause is fixed, through the relay's
full checks.

A replay publishes the archived body again to ``telemetry`` with the device's original
routing key, so it takes the path of any device message: the device's binding (or the
alternate exchange), a relay, every check of the contract and the registry, the tenant
queue, the scheduler. Nothing is trusted because it is a replay: refused again, it lands
in ``rejected`` with its reason like any message.

* **At most once.** The rejection is marked (``replay: {at, by, reading}``) by one
  conditional update before the publish (:func:`fairway.storage.rejections.claim_replay`);
  a second replay finds the mark and is refused (``already_replayed``), whoever asks.
  A replay refused again by the relay is archived as a new rejection, which can itself
  be replayed once its cause is fixed. A device registered less than
  ``FAIRWAY_DEVICE_CACHE_TTL_S`` ago is refused (``too_soon``): relays may still have
  it cached as unknown.
  A publish the broker does not confirm removes the mark again (it may be retried); a
  process dying between the mark and the publish leaves the mark without a publish (at
  most once, not exactly once).
* **Exactly once stored.** The stored reading's ``_id`` comes from the body's ``id``
  (else ``<stream>@<ts in ms>``), so a replayed reading that the device's own retry
  also delivered is one reading. The archive does not keep the AMQP ``message_id``
  property; a message that carried its id only there (or a device batch whose readings
  took theirs from it) is replayed under the body's ids. A reading refused out of a
  batch is archived with the id the relay derived for it, so it keeps that one.
* **Device batches.** A batch refused whole (unknown device ...) is replayed whole and
  checked reading by reading again; a reading of a batch refused on its own is
  replayed alone (one reading object), also when the tenant queue refused it, whose
  archived body is the relay's tenant message.
* **Where its readings are.** The mark lists the ids of the readings the replay stores
  (``readings``) and, for those whose message id is a device batch's element
  (:func:`fairway.kernel.batch_document.batch_element`), the batch document each would
  be stored in (``batches``: ``{id, ix}``, one per batch and hour). :func:`status` looks
  in those batch documents first (one ``_id`` read each, their ``ix`` must hold the
  index), then by ``_id`` for the readings not found there: so a replayed batch stored
  in its batch document costs one or two reads, and readings stored one document each
  (the setting off, or written before) are found too. Marks made before ``batches``
  existed are looked up by reading id only.
* **What can be replayed.** Refusals whose cause can be fixed outside the message: an
  unknown, disabled or tenant-less device (registered or enabled since), a rate limit or
  a full tenant queue (passed), a clock (a reading from the future whose time has come).
  Never what the message itself got wrong (size, JSON, schema, routing key), never an
  identity mismatch (a replay would launder a spoof), never a dead letter (its body is
  the relay's tenant message, not the device's), and never a body the archive cut short.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import NackError, UnroutableError
from pymongo.database import Database

from fairway.kernel import topology
from fairway.kernel.batch_document import (
    batch_document_id,
    batch_element,
    batch_of_document_id,
    indexes_of,
)
from fairway.kernel.contract import (
    BATCH_KEY,
    hour_key,
    message_id_of,
    parse_ts,
    reading_id,
    split_reading_id,
    split_routing_key,
)
from fairway.kernel.reasons import Reason, Rejection
from fairway.kernel.settings import Settings
from fairway.kernel.times import iso_z
from fairway.storage import mongo, registry
from fairway.storage import rejections as archive

REPLAYABLE = frozenset(
    {
        Reason.UNKNOWN_DEVICE,
        Reason.DEVICE_DISABLED,
        Reason.UNKNOWN_TENANT,
        Reason.CLOCK_SKEW,
        Reason.RATE_LIMITED,
        Reason.TENANT_RATE_LIMITED,
        Reason.TENANT_BACKLOG_FULL,
        Reason.UNROUTABLE,
    }
)
REPLAY_HEADER = "x-fairway-replay-of"
MAX_PER_REQUEST = 100


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one replay request did: ``sent``, or refused with a stable code and a sentence."""

    id: str
    outcome: str  # "sent" or "refused"
    error: str | None = None
    message: str = ""

    def as_json(self) -> dict[str, Any]:
        """The API's answer for this id."""
        out: dict[str, Any] = {"id": self.id, "outcome": self.outcome, "message": self.message}
        if self.error:
            out["error"] = self.error
        return out


def blocker(doc: dict[str, Any]) -> tuple[str, str] | None:
    """Why ``doc`` cannot be replayed, as (code, sentence); None if it can."""
    if doc.get("replay"):
        return "already_replayed", f"replayed already, at {iso_z(doc['replay'].get('at'))}"
    reason = doc.get("reason")
    if reason not in REPLAYABLE:
        return (
            "not_replayable",
            f"a message refused as {reason} would be refused again: only refusals whose "
            "cause can be fixed (unknown or disabled device, rate, clock, full queue) replay",
        )
    body = doc.get("body") or ""
    if len(body.encode()) != doc.get("body_bytes"):
        return "body_truncated", "the archive kept only the start of this body"
    if not doc.get("device") or not doc.get("routing_key"):
        return "not_replayable", "the rejection names no device"
    return None


def device_body(doc: dict[str, Any]) -> bytes:
    """What to publish again: the archived body, as its device sent it. A reading of a
    device batch refused by its tenant queue (full, missing) was archived as the relay's
    tenant message; it goes back as the reading object it came from."""
    body = doc["body"].encode()
    if doc.get("index") is None:
        return body
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(msg, dict) and "received" in msg and "tenant" in msg:
        return orjson.dumps({"ts": msg.get("ts"), "values": msg.get("values"), "id": msg.get("id")})
    return body


def expected_readings(db: Database, doc: dict[str, Any], settings: Settings) -> list[str] | None:
    """The ``_id`` of each reading the replay stores if accepted (None: not computable
    now, e.g. the device is still unknown): a reading's own ``id``, else ``<stream>@<ts
    in ms>``, as the relay derives them for a message without an AMQP ``message_id``."""
    found = _expected(db, doc, settings)
    return None if found is None else [rid for rid, _ in found]


def _expected(
    db: Database, doc: dict[str, Any], settings: Settings
) -> list[tuple[str, float]] | None:
    """:func:`expected_readings`, each with its device time (epoch seconds)."""
    try:
        device, stream = split_routing_key(doc["routing_key"])
        body = orjson.loads(device_body(doc))
        if isinstance(body, dict) and BATCH_KEY in body:
            body = body[BATCH_KEY]
        elements = body if isinstance(body, list) else [body]
        found = []
        for e in elements[: settings.max_batch_readings]:
            ts = parse_ts(e.get("ts"))
            found.append((message_id_of(None, e.get("id"), stream, ts, settings), ts))
    except (Rejection, orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        return None
    registered = registry.find_devices(db, [device]).get(device)
    if registered is None:
        return None
    return [(reading_id(registered.tenant, device, mid), ts) for mid, ts in found]


def batch_places(
    tenant: str, device: str, readings: list[tuple[str, float]]
) -> list[dict[str, Any]]:
    """``{id, ix}`` of each batch document that would hold some of ``readings`` (message
    id, device time): those whose message id is a batch element, by batch and hour."""
    places: dict[str, list[int]] = {}
    for message_id, ts in readings:
        element = batch_element(message_id)
        if element is None:
            continue
        hk = hour_key(tenant, device, datetime.fromtimestamp(ts, UTC))
        places.setdefault(batch_document_id(tenant, device, element[0], hk), []).append(element[1])
    return [{"id": doc_id, "ix": sorted(ix)} for doc_id, ix in places.items()]


def mark_places(found: list[tuple[str, float]] | None) -> dict[str, Any]:
    """The mark's ``readings`` and ``batches`` for the expected readings ``found``."""
    if found is None:
        return {"readings": None, "batches": []}
    by_device: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for rid, ts in found:
        tenant, device, message_id = split_reading_id(rid)
        by_device.setdefault((tenant, device), []).append((message_id, ts))
    batches = [p for (t, d), r in by_device.items() for p in batch_places(t, d, r)]
    return {"readings": [rid for rid, _ in found], "batches": batches}


def stored_readings(db: Database, readings: list[str], batches: list[dict[str, Any]]) -> int:
    """How many of ``readings`` are stored: in the batch documents ``batches`` (whose
    ``ix`` holds their index) or as documents of their own. One ``_id`` read per batch
    document, then one per reading not found in them."""
    collection = db[mongo.TELEMETRY]
    wanted = set(readings)
    found: set[str] = set()
    ids = [place["id"] for place in batches]
    for stored in mongo.find_by_ids(collection, ids, {"ix": 1, "r.ts": 1}, keyed_max=None):
        base = batch_of_document_id(stored["_id"])
        found.update(f"{base}#{i}" for i in indexes_of(stored))
    found &= wanted
    rest = [rid for rid in readings if rid not in found]
    if rest:
        found.update(
            d["_id"] for d in mongo.find_by_ids(collection, rest, {"_id": 1}, keyed_max=None)
        )
    return len(found)


def replay(
    db: Database,
    channel: BlockingChannel,
    settings: Settings,
    doc: dict[str, Any],
    by: str,
) -> Outcome:
    """Replay one archived rejection (already checked visible to ``by``) at most once."""
    rid = str(doc["_id"])
    why_not = blocker(doc)
    if why_not is not None:
        return Outcome(rid, "refused", *why_not)
    now = datetime.now(UTC)
    wait = _cache_wait(db, doc, settings, now)
    if wait > 0:
        return Outcome(
            rid,
            "refused",
            "too_soon",
            f"the device was registered just now; relays may still have it cached as unknown "
            f"(FAIRWAY_DEVICE_CACHE_TTL_S): replay in {wait:.0f} s",
        )
    mark = {"at": now, "by": by, **mark_places(_expected(db, doc, settings))}
    if archive.claim_replay(db, rid, mark) is None:
        return Outcome(rid, "refused", "already_replayed", "replayed already")
    try:
        publish(channel, doc)
    except Exception:
        archive.release_replay(db, rid)
        raise
    return Outcome(rid, "sent", None, "sent through the relay's checks")


def _cache_wait(db: Database, doc: dict[str, Any], settings: Settings, now: datetime) -> float:
    """Seconds until relays' registry caches may have forgotten that an unknown device was
    unknown (0: replay now). Without the wait a replay right after the registration
    would be refused again (and could not be replayed twice)."""
    if doc.get("reason") not in (Reason.UNKNOWN_DEVICE, Reason.UNKNOWN_TENANT):
        return 0.0
    device = registry.device_document(db, doc["device"]) or {}
    created = device.get("created")
    if created is None:
        return 0.0
    return max(0.0, settings.device_cache_ttl_s - (now - created).total_seconds())


def publish(channel: BlockingChannel, doc: dict[str, Any]) -> None:
    """Publish the archived body with its routing key on a throwaway confirmed channel;
    raise if the broker does not take it (a full ``ingest`` queue nacks)."""
    confirmed = channel.connection.channel()
    try:
        confirmed.confirm_delivery()
        confirmed.basic_publish(
            topology.TELEMETRY,
            doc["routing_key"],
            device_body(doc),
            pika.BasicProperties(
                delivery_mode=2,
                content_type="application/json",
                headers={REPLAY_HEADER: str(doc["_id"])},
            ),
            mandatory=True,
        )
    except (NackError, UnroutableError) as exc:
        raise ReplayNotTaken(f"the broker did not take the replay: {exc!r}") from None
    finally:
        if confirmed.is_open:
            confirmed.close()


class ReplayNotTaken(Exception):
    """The broker refused the replayed message (queue full); the mark was removed."""


def status(
    db: Database, doc: dict[str, Any], later: dict[str, list[dict[str, Any]]] | None = None
) -> dict[str, Any] | None:
    """Where a replayed rejection's message is now: ``stored`` (its readings exist:
    ``stored`` of ``readings``; a batch's readings are checked one by one by the relay),
    ``refused`` again (a later rejection of the device with the same body), or
    ``pending``; None if it was never replayed. ``later``: a per-request cache of each
    device's rejections (a page of the ledger reads each device's once)."""
    mark = doc.get("replay")
    if not mark:
        return None
    out: dict[str, Any] = {"at": iso_z(mark.get("at")), "by": mark.get("by"), "state": "pending"}
    readings = mark.get("readings") or []
    if readings:
        stored = stored_readings(db, readings, mark.get("batches") or [])
        if stored:
            return {**out, "state": "stored", "readings": readings, "stored": stored}
    device = doc["device"]
    if later is None:
        later = {}
    if device not in later:
        later[device] = archive.later_of_device(db, device, datetime.min.replace(tzinfo=UTC))
    for other in later[device]:
        if other["at"] > mark["at"] and other.get("body") == doc.get("body"):
            return {**out, "state": "refused", "reason": other["reason"], "detail": other["detail"]}
    return out
