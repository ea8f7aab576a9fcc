"""The rejections archiver: ``rejected`` -> ``rejections``, queryable per device.

What happens to every message in the ``rejected`` queue:

* it becomes one document in ``rejections``: ``device``, ``tenant`` (header, else the
  registry), ``reason`` (``x-fairway-reason``; ``dead_letter`` for what a tenant queue
  dead-lettered), ``detail``, ``routing_key``, ``at``, and the first
  ``rejected_body_bytes`` of the body as text (``body``; ``body_bytes`` its full size);
  and, for one reading refused out of a device batch, ``index``: its position in it;
* documents are inserted in batches (``archiver_batch_size``, or after
  ``archiver_linger_ms``) on a writer thread; the deliveries are acked after the
  insert returned. Database down: the batch is retried with capped backoff, nothing is
  acked, and the broker keeps the rest (prefetch = two batches);
* a retried insert re-sends the same document ids, so it cannot archive twice; a
  crash between the insert and the ack archives that batch twice (the rejection log
  is diagnostic; duplicates are harmless and trimmed like the rest);
* every ``archiver_trim_interval_s`` the devices that got new rejections and hold
  more than ``rejections_per_device`` are trimmed to 90 % of it, newest kept
  (:func:`trim`);
* each inserted batch is also counted by tenant, UTC hour and reason in
  ``rejection_counts`` (after the insert, before the ack; per archiver process, see
  :func:`fairway.storage.rejections.count_archived`), so the counts outlive the
  trimming; counts older than a week are deleted with the trimming. A batch archived
  twice (crash before the ack) is counted twice, like the archive itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pika.channel import Channel
from pika.spec import Basic, BasicProperties
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from archiver.metrics import ARCHIVED, BUFFERED, DB_UP, FAILED, TRIM_SECONDS, TRIMMED
from fairway.amqp.service import AmqpService, Consumer, DrainExpired
from fairway.kernel import topology
from fairway.kernel.acks import AckWatermark
from fairway.kernel.reasons import Reason
from fairway.kernel.settings import Settings
from fairway.storage import mongo, registry
from fairway.storage.rejections import count_archived, trim, trim_counts

log = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"
MAX_ATTEMPTS = 3  # of a batch the database refuses documents of
_REASONS = {r.value for r in Reason} | {DEAD_LETTER}


def rejection_document(
    routing_key: str,
    headers: dict[str, Any] | None,
    body: bytes,
    excerpt_bytes: int,
    at: datetime,
) -> dict[str, Any]:
    """The ``rejections`` document of one message from ``rejected`` (pure)."""
    headers = headers or {}
    reason = _text(headers.get(topology.REASON_HEADER))
    detail = _text(headers.get(topology.DETAIL_HEADER))
    device = _text(headers.get(topology.DEVICE_HEADER))
    tenant = _text(headers.get(topology.TENANT_HEADER))
    if reason is None and routing_key.startswith(DEAD_LETTER + "."):
        # Dead-lettered from a tenant queue: the body is the relay's tenant message.
        reason = DEAD_LETTER
        tenant = tenant or routing_key.partition(".")[2] or None
        deaths = headers.get("x-death") or [{}]
        detail = detail or f"dead-lettered ({_text(deaths[0].get('reason')) or 'unknown'})"
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            device = device or orjson.loads(body).get("device")
    size = headers.get(topology.SIZE_HEADER)
    index = headers.get(topology.INDEX_HEADER)
    doc = {
        "device": device,
        "tenant": tenant,
        "reason": reason or "unknown",
        "detail": detail,
        "routing_key": _text(headers.get(topology.ROUTING_KEY_HEADER)) or routing_key,
        "at": at,
        "body": body[:excerpt_bytes].decode("utf-8", "replace"),
        "body_bytes": int(size) if isinstance(size, int) else len(body),
    }
    if isinstance(index, int) and not isinstance(index, bool):
        doc["index"] = index
    return doc


def _only_duplicates(exc: BulkWriteError) -> bool:
    """True if every error is a duplicate key: the documents were already inserted."""
    details = exc.details or {}
    errors = details.get("writeErrors", ())
    return not details.get("writeConcernErrors") and all(
        e.get("code") == mongo.DUPLICATE_KEY for e in errors
    )


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


class Archiver(AmqpService):
    """Consume ``rejected``; insert batches into ``rejections``; ack after the insert."""

    name = "fairway-archiver"

    def __init__(self, settings: Settings, db: Database) -> None:
        super().__init__(settings)
        self.db = db
        self._rejected = Consumer(
            topology.REJECTED, 2 * settings.archiver_batch_size, self._on_message
        )
        self._acks = AckWatermark()
        self._buffer: list[tuple[int, dict[str, Any]]] = []
        self._writing = 0  # messages of the batch the writer has, 0: writer idle
        self._linger_timer: Any = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="archive")
        self._touched: set[str | None] | None = None  # None: trim every device next time
        self._last_at = datetime.min.replace(tzinfo=UTC)
        self._source = uuid.uuid4().hex[:12]  # this process's rejection_counts documents
        BUFFERED.set_function(lambda: len(self._buffer) + self._writing)
        self.every(settings.archiver_trim_interval_s, self._trim_soon, first=1.0)

    # -- consuming -----------------------------------------------------------------
    def consumers(self) -> list[Consumer]:
        return [self._rejected]

    @property
    def _channel(self) -> Channel | None:
        return self._rejected.channel

    def on_connection_lost(self) -> None:
        # Unacked deliveries go back to ``rejected``; what is being written may be
        # archived twice (see the module doc).
        self._buffer.clear()
        self._acks.reset()

    def _on_message(
        self, channel: Channel, method: Basic.Deliver, props: BasicProperties, body: bytes
    ) -> None:
        self._acks.track(method.delivery_tag)
        doc = rejection_document(
            method.routing_key,
            props.headers,
            body,
            self.settings.rejected_body_bytes,
            self._next_at(),
        )
        self._buffer.append((method.delivery_tag, doc))
        self._flush(force=False)

    def _next_at(self) -> datetime:
        """Now, at BSON's millisecond precision, and later than the previous one.

        Unique times let ``list_rejections(before=...)`` page without skipping ties.
        """
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if now <= self._last_at:
            now = self._last_at + timedelta(milliseconds=1)
        self._last_at = now
        return now

    def _flush(self, force: bool) -> None:
        if self._writing or not self._buffer:
            return
        if len(self._buffer) < self.settings.archiver_batch_size and not force:
            if self._linger_timer is None:
                self._linger_timer = self.ioloop.call_later(
                    self.settings.archiver_linger_ms / 1000.0, self._linger_expired
                )
            return
        batch, self._buffer = self._buffer, []
        self._writing = len(batch)
        channel = self._channel
        self._writer.submit(self._write, channel, batch)

    def _linger_expired(self) -> None:
        self._linger_timer = None
        self._flush(force=True)

    # -- writer thread -------------------------------------------------------------
    def _write(self, channel: Channel | None, batch: list[tuple[int, dict[str, Any]]]) -> None:
        docs = [doc for _, doc in batch]
        refusals = 0

        def insert() -> None:
            nonlocal refusals
            self._fill_tenants(docs)
            try:
                # insert_many gives each document an ObjectId once: a retry after an
                # unknown outcome re-sends the same ids, so nothing is archived twice.
                self.db[mongo.REJECTIONS].insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                if _only_duplicates(exc):
                    # Inserted by an attempt whose counting then failed: count now.
                    count_archived(self.db, docs, self._source)
                    return
                refusals += 1
                if refusals < MAX_ATTEMPTS:
                    raise
                # Refused documents must not wedge the queue: count, log, ack.
                FAILED.inc(len(exc.details.get("writeErrors", ())))
                log.error("rejections refused by the database", extra={"error": repr(exc)})
                return
            count_archived(self.db, docs, self._source)

        try:
            self.retrying("archive write", insert, on_error=lambda _exc: DB_UP.set(0))
            written = True
        except DrainExpired:
            written = False  # unacked: the broker redelivers
        if written:
            DB_UP.set(1)
            for doc in docs:
                ARCHIVED.labels(doc["reason"] if doc["reason"] in _REASONS else "other").inc()
            if self._touched is not None:
                self._touched.update(doc["device"] for doc in docs)
        self.call_soon(lambda: self._written(channel, batch, written))

    def _fill_tenants(self, docs: list[dict[str, Any]]) -> None:
        """The tenant of documents that only name a device, from the registry."""
        unknown = sorted({d["device"] for d in docs if d["tenant"] is None and d["device"]})
        if not unknown:
            return
        found = registry.find_devices(self.db, unknown)
        for doc in docs:
            device = found.get(doc["device"]) if doc["tenant"] is None else None
            if device is not None:
                doc["tenant"] = device.tenant

    def _written(
        self, channel: Channel | None, batch: list[tuple[int, dict[str, Any]]], written: bool
    ) -> None:
        self._writing = 0
        if written and channel is self._channel and channel is not None and channel.is_open:
            upto = self._acks.settle(tag for tag, _ in batch)
            if upto is not None:
                channel.basic_ack(upto, multiple=True)
        self._flush(force=self.stopping)

    # -- trimming ------------------------------------------------------------------
    def _trim_soon(self) -> None:
        self._writer.submit(self._trim)

    def _trim(self) -> None:
        """Writer thread (never concurrent with an insert): trim the devices touched."""
        devices, self._touched = self._touched, set()
        if devices is not None and not devices:
            return
        started = time.perf_counter()
        try:
            cap = self.settings.rejections_per_device
            deleted = trim(self.db, devices, cap, down_to=cap - cap // 10)
            trim_counts(self.db, datetime.now(UTC))
        except Exception as exc:
            log.warning("trim failed", extra={"error": repr(exc)})
            self._touched = None  # try every device next time
            return
        TRIM_SECONDS.observe(time.perf_counter() - started)
        TRIMMED.inc(deleted)
        if deleted:
            log.info("trimmed rejections", extra={"deleted": deleted})

    # -- stopping ------------------------------------------------------------------
    def drained(self) -> bool:
        self._flush(force=True)
        return not self._buffer and not self._writing

    def after_drain(self) -> None:
        self._writer.shutdown(wait=False, cancel_futures=True)


def run(settings: Settings) -> None:
    """``fairway archiver``: serve until SIGTERM, then drain."""
    db = mongo.connect(settings)
    mongo.ensure_indexes(db)
    Archiver(settings, db).serve(settings.metrics_port)
