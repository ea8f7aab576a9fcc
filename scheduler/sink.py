"""Where the scheduler's batches go: MongoDB, or nowhere (for benchmarks).

A sink's ``write`` takes tenant-queue messages (bundles of readings, or single readings
in the format before bundles) and either returns a :class:`WriteOutcome` (every reading
is then stored, a duplicate, or refused for good) or raises: an exception means
*nothing* is known to be durable, and the scheduler retries the whole batch after a
backoff. Retrying is safe because writes are idempotent (``_id`` from tenant, device
and message id). A message is refused (dead-lettered whole) when it is not the relay's
output or when one of its readings is refused for good; its other readings stay stored.

Readings of a device batch (ids ``<batch id>#<index>``, ``kernel.batch_document``) are
stored as one document per batch and hour (``FAIRWAY_BATCH_DOCUMENTS``, default on),
``_id`` from the batch id and hour, so a redelivered batch is again a duplicate key.
Such a document is never changed once stored: when its ``_id`` is found stored already
(a redelivery, perhaps accepting more of the batch; a batch split across messages; a
reading replayed alone), one read of the stored document tells which readings it holds
(duplicates) and the others are stored as documents of their own. So each reading id is
stored in one place, whatever the order of the paths.

Each stored reading names the sink's rollup writer (``w``); the sink folds what it
stored into rollups in memory (:mod:`scheduler.rollup_folder`) before the batch is acked.

The MongoDB sink also maintains ``device_state`` (first/last reading, latest values per
stream) from what it wrote, stored readings and duplicates alike. The update is an
order-independent fold (:mod:`fairway.storage.device_state`), throttled: a device's
pending delta is flushed by the sink's own thread at most every
``FAIRWAY_DEVICE_STATE_FLUSH_S``. Only when a batch moves a device's first or last
*hour* beyond what this process has already written, the update is written before the
batch is acked, so the hour range history walks never misses an acked reading, even
after a kill -9.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from pymongo.database import Database
from pymongo.errors import BulkWriteError

from fairway.kernel import batch_document
from fairway.kernel.contract import ReadingKey, Written, WrittenBatch, tenant_readings
from fairway.kernel.settings import Settings
from fairway.storage import device_state, mongo
from fairway.storage.device_state import DeviceDelta
from fairway.storage.telemetry import floor_hour
from scheduler import metrics
from scheduler.documents import BatchDocuments, BatchGroup, BatchGroups, Member, Placed
from scheduler.rollup_folder import RollupFolder

log = logging.getLogger(__name__)

# Non-duplicate per-document errors are retried this many times before the message
# is refused (dead-lettered to ``rejected``), so one bad document cannot wedge a queue.
MAX_DOCUMENT_ATTEMPTS = 3
# Devices with a pending device_state delta; beyond this a device's delta is written
# at once (before the ack), so memory stays bounded whatever the fleet size.
MAX_PENDING_DEVICES = 10_000
# Batch documents this process stored or read, with the indexes each holds (least
# recently used dropped): a batch document is never changed, so a reading of a known one
# is settled without a failed insert and a read (a device whose own ids look like
# "<name>#<n>" would otherwise pay three round trips per reading).
MAX_KNOWN_BATCHES = 10_000
# Devices whose written hour range this process remembers (least recently used dropped:
# a forgotten device is just written at once again on its next batch).
MAX_KNOWN_DEVICES = 100_000


Doc = tuple[int, dict, dict]  # message index, document, reading as decoded


@dataclass
class WriteOutcome:
    """Per-batch result; lists are by message, in batch order."""

    stored: int = 0  # readings newly stored, in all
    stored_each: list[int] = field(default_factory=list)  # readings newly stored
    duplicates: list[int] = field(default_factory=list)  # readings found already stored
    refused: list[int] = field(default_factory=list)  # indexes of messages refused for good
    durable: list[dict] = field(default_factory=list)  # readings stored or already stored

    @classmethod
    def of(cls, messages: int) -> WriteOutcome:
        """An outcome of ``messages`` messages with nothing recorded yet."""
        return cls(stored_each=[0] * messages, duplicates=[0] * messages)

    def refuse(self, index: int) -> None:
        """Refuse message ``index`` (once)."""
        if index not in self.refused:
            self.refused.append(index)


class MalformedOutcome(Exception):
    """A sink answered a write with something that is not an outcome of the batch."""


def _counts(value: object, messages: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == messages
        and all(type(v) is int and v >= 0 for v in value)
    )


def check_outcome(outcome: object, messages: int) -> WriteOutcome:
    """``outcome`` if it is a well-formed outcome of a batch of ``messages`` messages;
    else raise :class:`MalformedOutcome` saying what is wrong (a sink's bug must not
    reach the I/O loop, which settles by index)."""
    if not isinstance(outcome, WriteOutcome):
        raise MalformedOutcome(f"not a WriteOutcome: {type(outcome).__name__}")
    if not _counts(outcome.stored_each, messages) or not _counts(outcome.duplicates, messages):
        raise MalformedOutcome(f"stored_each/duplicates are not {messages} counts")
    refused = outcome.refused
    if not isinstance(refused, list) or not all(
        type(i) is int and 0 <= i < messages for i in refused
    ):
        raise MalformedOutcome(f"refused holds indexes outside 0..{messages - 1}")
    if not isinstance(outcome.durable, list) or not all(
        isinstance(d, dict) for d in outcome.durable
    ):
        raise MalformedOutcome("durable is not a list of readings")
    return outcome


UNDECODABLE = (ValueError, KeyError, TypeError, OverflowError, AttributeError)


class Sink(Protocol):
    """Durable destination of a batch of tenant-queue message bodies (bundles)."""

    def write(self, bodies: list[bytes]) -> WriteOutcome:
        """Write the batch; raise if the outcome is unknown (retry the batch)."""
        ...

    def close(self) -> None:
        """Write what the sink still holds (derived state) and stop its threads."""
        ...


class NullSink:
    """Stores nothing; measures the scheduler itself."""

    def write(self, bodies: list[bytes]) -> WriteOutcome:
        """Report every reading as stored (decoding each message, as a real sink must)."""
        outcome = WriteOutcome.of(len(bodies))
        for i, body in enumerate(bodies):
            try:
                readings = tenant_readings(body)
            except UNDECODABLE:
                outcome.refuse(i)
                continue
            outcome.stored_each[i] = len(readings)
            outcome.stored += len(readings)
            outcome.durable.extend(readings)
        return outcome

    def close(self) -> None:
        """Nothing to write."""


class MongoSink:
    """``insert_many(ordered=False)`` into ``telemetry``; duplicates are no-ops."""

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> MongoSink:
        """The sink with the device-state throttle and rollup folding of ``settings``."""
        return cls(
            db,
            settings.device_state_flush_s,
            RollupFolder(
                db,
                flush_grace_s=settings.rollup_flush_grace_s,
                lease_s=settings.rollup_writer_lease_s,
                max_cells=settings.rollup_max_cells,
            ),
            settings.batch_documents,
        )

    def __init__(
        self,
        db: Database,
        device_state_flush_s: float = 2.0,
        rollups: RollupFolder | None = None,
        batch_documents: bool = True,
    ) -> None:
        self._collection = db[mongo.TELEMETRY]
        self._batch_documents = batch_documents
        self._known_batches: OrderedDict[str, frozenset[int]] = OrderedDict()
        self._known_lock = threading.Lock()
        self._state = DeviceStateWriter(db, device_state_flush_s)
        self.rollups = rollups or RollupFolder(db)

    def write(self, bodies: list[bytes]) -> WriteOutcome:
        """Insert every reading of the batch; classify duplicates and readings refused for good."""
        outcome, stored, duplicates, batches = self.store(bodies, self.rollups.writer)
        # raises: not acked, the batch is retried
        self.rollups.record(stored, duplicates, batches)
        self._state.record(stored + duplicates, batches)
        _observe_lag(stored, batches)
        return outcome

    def store(
        self, bodies: list[bytes], writer: str | None
    ) -> tuple[WriteOutcome, list[Written], list[Written], list[WrittenBatch]]:
        """Insert every reading of the batch, stamped ``w: writer`` unless None; the
        outcome, the readings stored and those found stored already, each with the
        ``(tenant, device, message id)`` of its reading id, and the batch documents
        stored (their readings are in neither list: stored, as one entry each)."""
        outcome = WriteOutcome.of(len(bodies))
        docs: list[Doc] = []
        documents = BatchDocuments(writer)
        document = documents.document
        groups = BatchGroups(documents) if self._batch_documents else None
        for i, body in enumerate(bodies):
            try:
                found: list[Doc] = []
                placed: list[Placed] = []
                for reading in tenant_readings(body):
                    at = None if groups is None else groups.place(i, reading)
                    if at is None:
                        found.append((i, document(reading), reading))
                    else:
                        placed.append(at)
            except UNDECODABLE:
                outcome.refuse(i)  # not the relay's output: never storable
                continue
            docs.extend(found)
            if groups is not None:
                for at in placed:
                    groups.add(at)
        batches = [] if groups is None else list(groups.groups.values())
        stored: list[Written] = []
        duplicates: list[Written] = []
        stored_batches: list[WrittenBatch] = []
        for attempt in range(1, MAX_DOCUMENT_ATTEMPTS + 1):
            docs, batches = self._insert(
                docs, batches, writer, outcome, stored, duplicates, stored_batches
            )
            if not docs and not batches:
                break
            if attempt == MAX_DOCUMENT_ATTEMPTS:
                for i, _doc, _reading in docs:
                    outcome.refuse(i)
                for group in batches:
                    for i, _reading, _ts in group.members.values():
                        outcome.refuse(i)
                    for _index, (i, _reading, _ts) in group.copies:
                        outcome.refuse(i)
        outcome.stored = len(stored) + sum(len(b[4]) for b in stored_batches)
        return outcome, stored, duplicates, stored_batches

    def close(self) -> None:
        """Stop the device-state and rollup threads after a last write of each."""
        self._state.close()
        self.rollups.close()

    def _insert(
        self,
        docs: list[Doc],
        batches: list[BatchGroup],
        writer: str | None,
        outcome: WriteOutcome,
        stored: list[Written],
        duplicates: list[Written],
        stored_batches: list[WrittenBatch],
    ) -> tuple[list[Doc], list[BatchGroup]]:
        """Insert ``docs`` and the documents of ``batches``; return those that failed for
        a reason other than a duplicate.

        Each reading written goes with its tenant, device and message id, taken once here
        for the rollup folder, the device state and the lag metric. A batch document
        found stored already is settled by :meth:`_settle_stored_batches`."""
        if not docs and not batches:
            return [], []
        if batches and self._known_batches:
            batches, alone = self._outside_known(batches, writer)
            docs = docs + alone
        batch_docs = [group.document(writer) for group in batches]
        try:
            self._collection.insert_many([d for _, d, _ in docs] + batch_docs, ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                raise
            errors = {e["index"]: e["code"] for e in exc.details.get("writeErrors", ())}
        else:
            errors = {}
        failed: list[Doc] = []
        if not errors:  # the usual case: every document stored (_settle, inlined)
            stored_each, durable = outcome.stored_each, outcome.durable
            for i, doc, reading in docs:
                stored.append(((reading["tenant"], reading["device"], reading["id"]), doc))
                stored_each[i] += 1
                durable.append(reading)
        else:
            for pos, entry in enumerate(docs):
                code = errors.get(pos)
                if code is None:
                    _settle(entry, outcome, stored, duplicate=False)
                elif code == mongo.DUPLICATE_KEY:
                    _settle(entry, outcome, duplicates, duplicate=True)
                else:
                    failed.append(entry)
        failed_batches: list[BatchGroup] = []
        found_stored: list[BatchGroup] = []
        batches_stored = 0
        for pos, group in enumerate(batches, len(docs)):
            code = errors.get(pos)
            if code is None:
                batches_stored += 1
                stored_batches.append(_settle_stored(group, outcome))
                copies = [member for _, member in group.copies]
                _settle_batch(group, copies, outcome, duplicates, duplicate=True)
                self._know(group.doc_id, group.members)
            elif code == mongo.DUPLICATE_KEY:
                found_stored.append(group)
            elif len(group.members) > 1:
                failed_batches.extend(group.split())  # so a bad reading fails alone
            else:
                failed_batches.append(group)
        _BATCHES_STORED.inc(batches_stored)
        if found_stored:
            missing = self._settle_stored_batches(found_stored, writer, outcome, duplicates)
            failed.extend(
                self._insert(missing, [], writer, outcome, stored, duplicates, stored_batches)[0]
            )
        return failed, failed_batches

    def _settle_stored_batches(
        self,
        groups: list[BatchGroup],
        writer: str | None,
        outcome: WriteOutcome,
        duplicates: list[Written],
    ) -> list[Doc]:
        """Settle batch documents whose ``_id`` is stored already (a redelivery, or a batch
        split across messages): the readings the stored document holds are duplicates;
        the others (a redelivery that accepted more of the batch, the rest of a split
        batch) are returned as documents of their own to insert.

        One ``_id`` equality read per document: only on these paths, never for a batch
        stored the first time. The database is asked even when this process remembers
        the document: another process may have stored it since it was deleted (with its
        tenant), holding other readings, and a reading is acked as a duplicate only if
        the document read holds it. A stored batch document is never changed, so a
        reading is in at most one place: the batch document, or (later) its own
        document. A document not found (deleted by retention since) holds nothing."""
        ids = list(dict.fromkeys(group.doc_id for group in groups))
        found = mongo.find_by_ids(
            self._collection,
            ids,
            {batch_document.INDEXES: 1, batch_document.READINGS: 1},
            keyed_max=None,
        )
        held: dict[str, frozenset[int]] = {}
        for doc in found:
            held[doc["_id"]] = frozenset(batch_document.indexes_of(doc))
            self._know(doc["_id"], held[doc["_id"]])
        _BATCHES_FOUND.inc(len(ids))
        document = BatchDocuments(writer).document
        missing: list[Doc] = []
        for group in groups:
            indexes = held.get(group.doc_id, frozenset())
            # A copy of a missing reading goes with it: one of the two is stored, the
            # other found a duplicate, as two copies of a reading document are.
            for index, member in (*group.members.items(), *group.copies):
                if index in indexes:
                    _settle_batch(group, (member,), outcome, duplicates, duplicate=True)
                else:
                    missing.append((member[0], document(member[1]), member[1]))
        return missing

    def _outside_known(
        self, batches: list[BatchGroup], writer: str | None
    ) -> tuple[list[BatchGroup], list[Doc]]:
        """``batches`` less the readings that a batch document this process knows stored
        does not hold: those go as documents of their own at once (what the found-stored
        path would do after a failed insert and a read). Readings it holds still go the
        insert's way, so only the database says they are duplicates (a document deleted
        since, with its tenant, must not turn a reading into a duplicate)."""
        remaining: list[BatchGroup] = []
        alone: list[Doc] = []
        document = BatchDocuments(writer).document
        for group in batches:
            held = self._remembered(group.doc_id)
            if held is None:
                remaining.append(group)
                continue
            _BATCHES_KNOWN.inc()
            kept = group.only(held)
            if kept is not None:
                remaining.append(kept)
            for index, member in (*group.members.items(), *group.copies):
                if index not in held:
                    alone.append((member[0], document(member[1]), member[1]))
        return remaining, alone

    def _remembered(self, doc_id: str) -> frozenset[int] | None:
        """The indexes batch document ``doc_id`` holds, if this process remembers it."""
        with self._known_lock:  # writer threads share the table
            held = self._known_batches.get(doc_id)
            if held is not None:
                self._known_batches.move_to_end(doc_id)
            return held

    def _know(self, doc_id: str, indexes: Iterable[int]) -> None:
        """Remember that batch document ``doc_id`` is stored, holding ``indexes``."""
        held = frozenset(indexes)
        with self._known_lock:
            self._known_batches[doc_id] = held
            self._known_batches.move_to_end(doc_id)
            if len(self._known_batches) > MAX_KNOWN_BATCHES:
                self._known_batches.popitem(last=False)


_BATCHES_STORED = metrics.SCHED_BATCH_DOCUMENTS.labels("stored")
_BATCHES_FOUND = metrics.SCHED_BATCH_DOCUMENTS.labels("found_stored")
_BATCHES_KNOWN = metrics.SCHED_BATCH_DOCUMENTS.labels("known_stored")


def _settle(entry: Doc, outcome: WriteOutcome, into: list[Written], *, duplicate: bool) -> None:
    """A reading document is durable: newly stored, or a ``duplicate`` of a stored one."""
    i, doc, reading = entry
    into.append((_key(reading), doc))
    if duplicate:
        outcome.duplicates[i] += 1
    else:
        outcome.stored_each[i] += 1
    outcome.durable.append(reading)


def _settle_stored(group: BatchGroup, outcome: WriteOutcome) -> WrittenBatch:
    """The readings of a batch document just stored are durable; what its consumers read."""
    written = group.written()
    counts, durable = outcome.stored_each, outcome.durable
    for i, reading, _ts in written[4]:
        counts[i] += 1
        durable.append(reading)
    return written


def _settle_batch(
    group: BatchGroup,
    members: Iterable[Member],
    outcome: WriteOutcome,
    into: list[Written],
    *,
    duplicate: bool,
) -> None:
    """Readings of a batch document are durable: newly stored, or ``duplicate``s."""
    counts = outcome.duplicates if duplicate else outcome.stored_each
    for member in members:
        i, reading = member[0], member[1]
        into.append((_key(reading), group.view(member)))
        counts[i] += 1
        outcome.durable.append(reading)


def _key(reading: dict) -> ReadingKey:
    """The ``(tenant, device, message id)`` a reading's ``_id`` is built from."""
    return reading["tenant"], reading["device"], reading["id"]


def _observe_lag(written: list[Written], batches: Iterable[WrittenBatch] = ()) -> None:
    """Relay receipt to durable write, per tenant (a batch document's readings share
    their receipt time: one observation counted once per reading)."""
    # A difference of datetimes: half the cost of a timestamp() per reading.
    now = datetime.fromtimestamp(time.time(), UTC)
    lag = metrics.SCHED_LAG_SECONDS
    lag.observe_many((key[0], (now - doc["received"]).total_seconds()) for key, doc in written)
    if batches:
        lag.observe_counts(
            (tenant, (now - received).total_seconds(), len(members))
            for tenant, _device, _stream, received, members in batches
        )


class DeviceStateWriter:
    """Pending ``device_state`` deltas per device, flushed by a thread it owns.

    ``record`` runs on writer threads before the batch is acked: it writes at once the
    deltas that extend a device's hour range beyond what this process wrote (and those
    that do not fit in the pending table) and leaves the rest to the flusher, which
    writes each dirty device at most every ``flush_s`` (0: every delta at once).
    """

    def __init__(self, db: Database, flush_s: float) -> None:
        self._db, self._flush_s = db, flush_s
        self._lock = threading.Lock()
        # FerretDB 1.24 applies an update as read, modify, write back the whole document,
        # not atomically: two concurrent updates of one device can lose one of them
        # (seen: last_ts moving back). So this process sends one device_state write at a time.
        self._write_lock = threading.Lock()
        self._pending: dict[str, DeviceDelta] = {}
        self._known: OrderedDict[str, tuple[datetime, datetime]] = OrderedDict()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if flush_s > 0:
            self._thread = threading.Thread(
                target=self._run, name="device-state-flusher", daemon=True
            )
            self._thread.start()
            atexit.register(self.close)

    def record(self, written: list[Written], batches: Iterable[WrittenBatch] = ()) -> None:
        """Take the deltas of written readings and batch documents; raise if an
        immediate write failed."""
        now: dict[str, DeviceDelta] = {}
        overflow = 0
        deltas = device_state.fold_written(written)
        if batches:
            device_state.fold_batches(batches, deltas)
        with self._lock:
            for device, delta in deltas.items():
                pending = self._pending.pop(device, None)
                if pending is not None:
                    pending.merge(delta)
                    delta = pending
                if self._flush_s <= 0 or self._extends_hours(device, delta):
                    now[device] = delta
                elif len(self._pending) >= MAX_PENDING_DEVICES:
                    now[device] = delta
                    overflow += 1
                else:
                    self._pending[device] = delta
            metrics.DEVICE_STATE_PENDING.set(len(self._pending))
        if now:
            try:
                with self._write_lock:
                    device_state.apply(self._db, now)
            except Exception:
                # The batch is retried (not acked), but the merged deltas of batches
                # acked earlier must not be lost with it.
                self._keep(now)
                raise
            self._remember(now)
            metrics.DEVICE_STATE_WRITES.labels("hour").inc(len(now) - overflow)
            metrics.DEVICE_STATE_WRITES.labels("overflow").inc(overflow)

    def flush(self) -> None:
        """Write every pending delta now; on failure keep them for the next flush."""
        with self._write_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
            metrics.DEVICE_STATE_PENDING.set(0)
        if not batch:
            return
        try:
            device_state.apply(self._db, batch)
        except Exception:
            log.warning("device_state flush of %d devices failed", len(batch), exc_info=True)
            self._keep(batch)
            return
        self._remember(batch)
        metrics.DEVICE_STATE_WRITES.labels("throttled").inc(len(batch))

    def close(self) -> None:
        """Stop the flusher thread and write what is pending (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._flush_s + 5)
        self.flush()

    def _keep(self, deltas: dict[str, DeviceDelta]) -> None:
        """Put deltas whose write failed back into the pending table (for the next flush)."""
        metrics.DEVICE_STATE_WRITES.labels("failed").inc(len(deltas))
        with self._lock:
            for device, delta in deltas.items():
                newer = self._pending.get(device)
                if newer is not None:
                    delta.merge(newer)
                self._pending[device] = delta
            metrics.DEVICE_STATE_PENDING.set(len(self._pending))

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()

    def _extends_hours(self, device: str, delta: DeviceDelta) -> bool:
        known = self._known.get(device)
        if known is None:
            return True
        self._known.move_to_end(device)
        first, last = known
        return floor_hour(delta.first_ts) < first or floor_hour(delta.last_ts) > last

    def _remember(self, written: dict[str, DeviceDelta]) -> None:
        with self._lock:
            for device, delta in written.items():
                first, last = floor_hour(delta.first_ts), floor_hour(delta.last_ts)
                known = self._known.pop(device, None)
                if known is not None:
                    first, last = min(first, known[0]), max(last, known[1])
                self._known[device] = (first, last)
                if len(self._known) > MAX_KNOWN_DEVICES:
                    self._known.popitem(last=False)
