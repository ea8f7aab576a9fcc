"""The rejections archiver: ``rejected`` -> ``rejections``, queryable per device.

What happens to every message in the ``rejected`` queue:

* it becomes one document in ``rejections``: ``device``, ``tenant`` (header, else the
  registry), ``reason`` (``x-fairway-reason``; ``dead_letter`` for what a tenant queue
  dead-lettered), ``detail``, ``routing_key``, ``at``, and the first
  ``rejected_body_bytes`` of the body as text (``body``; ``body_bytes`` its full size);
* documents are inserted in batches (``archiver_batch_size``, or after
  ``archiver_linger_ms``) on a writer thread; the deliveries are acked after the
  insert returned. Database down: the batch is retried with capped backoff, nothing is
  acked, and the broker keeps the rest (prefetch = two batches);
* a retried insert re-sends the same document ids, so it cannot archive twice; a
  crash between the insert and the ack archives that batch twice (the rejection log
  is diagnostic; duplicates are harmless and trimmed like the rest);
* every ``archiver_trim_interval_s`` the devices that got new rejections and hold
  more than ``rejections_per_device`` are trimmed to 90 % of it, newest kept
  (:func:`trim`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pika
from pika.channel import Channel
from pika.spec import Basic, BasicProperties
from prometheus_client import Counter, Gauge, Histogram
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from fairway.amqp.backoff import Backoff
from fairway.amqp.service import AmqpService
from fairway.kernel import topology
from fairway.kernel.acks import AckWatermark
from fairway.kernel.reasons import Reason
from fairway.kernel.settings import Settings
from fairway.storage import mongo, registry
from fairway.storage.rejections import trim

log = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"
DRAIN_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 3  # of a batch the database refuses documents of
_REASONS = {r.value for r in Reason} | {DEAD_LETTER}

ARCHIVED = Counter(
    "fairway_archiver_archived_total", "Rejected messages stored in rejections", ["reason"]
)
TRIMMED = Counter(
    "fairway_archiver_trimmed_total", "Archived rejections deleted beyond the per-device cap"
)
FAILED = Counter(
    "fairway_archiver_failed_total",
    "Rejected messages the database refused 3 times (logged, then acked)",
)
BUFFERED = Gauge("fairway_archiver_buffered", "Rejected messages received and not yet written")
TRIM_SECONDS = Histogram(
    "fairway_archiver_trim_seconds",
    "Time of one trim pass",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DB_UP = Gauge("fairway_archiver_db_up", "1 when the last insert succeeded")


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
    return {
        "device": device,
        "tenant": tenant,
        "reason": reason or "unknown",
        "detail": detail,
        "routing_key": _text(headers.get(topology.ROUTING_KEY_HEADER)) or routing_key,
        "at": at,
        "body": body[:excerpt_bytes].decode("utf-8", "replace"),
        "body_bytes": int(size) if isinstance(size, int) else len(body),
    }


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
        self._channel: Channel | None = None
        self._consumer_tag: str | None = None
        self._acks = AckWatermark()
        self._buffer: list[tuple[int, dict[str, Any]]] = []
        self._writing = False
        self._linger_timer: Any = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="archive")
        self._stop_event = threading.Event()
        self._touched: set[str | None] | None = None  # None: trim every device next time
        self._trim_started = False
        self._drain_deadline = float("inf")
        self._last_at = datetime.min.replace(tzinfo=UTC)

    # -- consuming -----------------------------------------------------------------
    def on_connected(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)
        if not self._trim_started:
            self._trim_started = True
            self.ioloop.call_later(1.0, self._trim_periodically)

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self.reconnect_on_channel_close)
        channel.basic_qos(
            prefetch_count=2 * self.settings.archiver_batch_size,
            callback=lambda _f: self._consume(channel),
        )

    def _consume(self, channel: Channel) -> None:
        self._consumer_tag = channel.basic_consume(topology.REJECTED, self._on_message)
        log.info("consuming", extra={"queue": topology.REJECTED})

    def on_connection_lost(self) -> None:
        # Unacked deliveries go back to ``rejected``; what is being written may be
        # archived twice (see the module doc).
        self._channel = None
        self._consumer_tag = None
        self._buffer.clear()
        self._acks.reset()
        BUFFERED.set(0)

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
        BUFFERED.set(len(self._buffer))
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
        self._writing = True
        channel = self._channel
        self._writer.submit(self._write, channel, batch)

    def _linger_expired(self) -> None:
        self._linger_timer = None
        self._flush(force=True)

    # -- writer thread -------------------------------------------------------------
    def _write(self, channel: Channel | None, batch: list[tuple[int, dict[str, Any]]]) -> None:
        docs = [doc for _, doc in batch]
        backoff = Backoff(base=0.1, cap=self.settings.db_backoff_max_s)
        written: bool | None = False
        refusals = 0
        while not written:
            try:
                self._fill_tenants(docs)
                # insert_many gives each document an ObjectId once: a retry after an
                # unknown outcome re-sends the same ids, so nothing is archived twice.
                self.db[mongo.REJECTIONS].insert_many(docs, ordered=False)
                written = True
            except BulkWriteError as exc:
                written = _only_duplicates(exc)
                refusals += not written
                if refusals >= MAX_ATTEMPTS:
                    # Refused documents must not wedge the queue: count, log, ack.
                    FAILED.inc(len(exc.details.get("writeErrors", ())))
                    log.error("rejections refused by the database", extra={"error": repr(exc)})
                    written = True
                elif not written:
                    written = self._wait_to_retry(exc, backoff)
            except Exception as exc:
                written = self._wait_to_retry(exc, backoff)
            if written is None:
                break  # drain deadline passed: unacked, the broker redelivers
        if written:
            DB_UP.set(1)
            for doc in docs:
                ARCHIVED.labels(doc["reason"] if doc["reason"] in _REASONS else "other").inc()
            if self._touched is not None:
                self._touched.update(doc["device"] for doc in docs)
        self.call_soon(lambda: self._written(channel, batch, bool(written)))

    def _wait_to_retry(self, exc: Exception, backoff: Backoff) -> bool | None:
        """Pause before retrying a failed insert; None if the drain deadline passed."""
        DB_UP.set(0)
        if self.stopping and time.monotonic() > self._drain_deadline:
            return None
        delay = backoff.next()
        log.warning("archive write failed", extra={"error": repr(exc), "retry_s": delay})
        self._stop_event.wait(delay)
        return False

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
        self._writing = False
        BUFFERED.set(len(self._buffer))
        if written and channel is self._channel and channel is not None and channel.is_open:
            upto = self._acks.settle(tag for tag, _ in batch)
            if upto is not None:
                channel.basic_ack(upto, multiple=True)
        self._flush(force=self.stopping)

    # -- trimming ------------------------------------------------------------------
    def _trim_periodically(self) -> None:
        if self.stopping:
            return
        self._writer.submit(self._trim)
        self.ioloop.call_later(self.settings.archiver_trim_interval_s, self._trim_periodically)

    def _trim(self) -> None:
        """Writer thread (never concurrent with an insert): trim the devices touched."""
        devices, self._touched = self._touched, set()
        if devices is not None and not devices:
            return
        started = time.perf_counter()
        try:
            cap = self.settings.rejections_per_device
            deleted = trim(self.db, devices, cap, down_to=cap - cap // 10)
        except Exception as exc:
            log.warning("trim failed", extra={"error": repr(exc)})
            self._touched = None  # try every device next time
            return
        TRIM_SECONDS.observe(time.perf_counter() - started)
        TRIMMED.inc(deleted)
        if deleted:
            log.info("trimmed rejections", extra={"deleted": deleted})

    # -- stopping ------------------------------------------------------------------
    def begin_stop(self) -> None:
        self._drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        channel = self._channel
        if channel is not None and channel.is_open and self._consumer_tag:
            channel.basic_cancel(self._consumer_tag)
        self._finish_drain()

    def _finish_drain(self) -> None:
        self._flush(force=True)
        if (not self._buffer and not self._writing) or time.monotonic() > self._drain_deadline:
            self._stop_event.set()
            self._writer.shutdown(wait=False, cancel_futures=True)
            self.close()
        else:
            self.ioloop.call_later(0.02, self._finish_drain)


def run(settings: Settings) -> None:
    """``fairway archiver``: serve until SIGTERM, then drain."""
    db = mongo.connect(settings)
    mongo.ensure_indexes(db)
    Archiver(settings, db).serve(settings.metrics_port)
