"""The fair scheduler: tenant queues -> DRR -> write batches -> ack what is durable.

* One channel per tenant queue, so the broker keeps the backlog and the delivery tags
  of one channel belong to one tenant. Each channel's prefetch is its tenant's share
  of one buffer budget, re-shared by weight among backlogged tenants every second
  (:mod:`scheduler.prefetch`). The prefetch is per consumer, which classic and quorum
  queues both accept; a change recycles the tenant's consumer on its channel
  (:mod:`scheduler.tenant_channel`). Local buffers stay bounded by
  ``scheduler_buffer + tenants x scheduler_prefetch`` between re-shares, and by twice
  that while consumers are being recycled.
* Deliveries are bundles of readings (``x-fairway-readings`` says how many; a message
  without it is one reading, the format before bundles, still read). They go into a
  :class:`~scheduler.drr.DeficitRoundRobin` that charges each its readings; a batch of
  whole bundles, up to ``batch_size`` readings, is taken in DRR order when it is full
  or its oldest message has waited ``batch_linger_ms``, and only while fewer than
  ``writers`` batches are being written.
* Writers run on threads (the pika I/O loop never waits for MongoDB) and hand the
  outcome back with ``add_callback_threadsafe``. A bundle is settled once every one of
  its readings is stored or a duplicate; the ack is one ``multiple`` ack per channel
  over the settled prefix (:class:`~fairway.kernel.acks.AckWatermark`). A bundle with a
  reading the database refuses for good (or that is not the relay's output) is nacked
  without requeue and dead-letters, whole, to ``rejected``.
* Database down: the writer retries the batch with capped backoff; nothing is acked,
  buffers fill to the prefetch and the broker stops delivering (backpressure).
* New tenants are found by polling the tenant list every ``tenant_refresh_s``.
* SIGTERM: cancel consumers, flush every buffered message, ack, close. Anything not
  written by the drain deadline stays unacked and the broker requeues it.
* Events (``events_enabled``): a writer coalesces its written batch into at most one
  ``telemetry.<tenant>.<device>`` event per device (:func:`fairway.domain.coalesce.coalesce`);
  the I/O loop publishes them *after* the batch's acks, on a separate connection, so
  a blocked or failing publisher can neither lose nor delay an ack. Best-effort:
  events are transient and dropped (counted) while the publisher is down.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import pika
from pika.channel import Channel
from pika.spec import Basic

from fairway.amqp import side
from fairway.amqp.connection import Brokers
from fairway.amqp.service import AmqpService, Consumer, DrainExpired
from fairway.domain import coalesce
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage import mongo, registry
from fairway.storage.registry import Tenant
from scheduler import metrics
from scheduler.drr import DeficitRoundRobin
from scheduler.prefetch import prefetch_shares, worth_changing
from scheduler.queue_declare import declare_apart
from scheduler.sink import MongoSink, NullSink, Sink, WriteOutcome
from scheduler.tenant_channel import TenantConsumer

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 1.0
FIRST_TICK_S = 0.2  # soon after connecting, so backlogged tenants get their share early


@dataclass(slots=True)
class Delivery:
    """A buffered message (a bundle of readings) and where its ack goes."""

    consumer: TenantConsumer
    tag: int
    body: bytes
    source: str  # the consumer tag it came from (current or retiring consumer)
    readings: int = 1  # what the DRR charges it


def readings_of(props: Any) -> int:
    """Readings a tenant-queue message carries, from its header (absent: one)."""
    headers = getattr(props, "headers", None)
    if not headers:
        return 1
    count = headers.get(topology.READINGS_HEADER)
    return count if isinstance(count, int) and count >= 1 else 1


class Scheduler(AmqpService):
    """Consume every tenant queue and write fairly into a :class:`Sink`."""

    name = "fairway-scheduler"
    drain_timeout_s = 15.0

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        list_tenants: Callable[[], list[Tenant]],
    ) -> None:
        super().__init__(settings)
        self.sink = sink
        self.list_tenants = list_tenants
        self.drr: DeficitRoundRobin[Delivery] = DeficitRoundRobin(settings.drr_quantum)
        self.tenant_channels: dict[str, TenantConsumer] = {}
        self.known: dict[str, Tenant] = {}
        self.inflight = 0
        # Tenants whose queue was declared by an earlier version with other bounds (before
        # the byte bound per reading): consumed as they are.
        self.old_arguments: set[str] = set()
        metrics.SCHED_OLD_ARGUMENTS.set_function(lambda: len(self.old_arguments))
        self._writers = ThreadPoolExecutor(settings.writers, thread_name_prefix="writer")
        self._io = ThreadPoolExecutor(1, thread_name_prefix="tenants")
        self._linger_s = settings.batch_linger_ms / 1000.0
        self._oldest: float | None = None  # when the oldest buffered message arrived
        self._linger_timer: Any = None
        self._depths_due = 0  # passive declares of this tick not yet answered
        self._events = (
            side.EventPublisher(Brokers(settings, f"{self.name}-events"), self.ioloop)
            if settings.events_enabled
            else None
        )
        if self._events is not None:
            self.add_side_connection(self._events)  # it reconnects on its own
        metrics.SCHED_INFLIGHT_BATCHES.set_function(lambda: self.inflight)
        self.every(GAUGE_INTERVAL_S, self._tick_gauges, first=FIRST_TICK_S)
        self.every(settings.tenant_refresh_s, self._refresh_tenants)

    # -- tenants and channels ------------------------------------------------------
    def on_connected(self, connection: pika.SelectConnection) -> None:
        self._refresh_tenants()

    def _refresh_tenants(self) -> None:
        """List tenants off the I/O loop; open channels for new ones, update weights."""
        if self.stopping or not self._connected:
            return
        future = self._io.submit(self.list_tenants)
        future.add_done_callback(lambda f: self.call_soon(lambda: self._tenants_listed(f)))

    @property
    def _connected(self) -> bool:
        return self.connection is not None and self.connection.is_open

    def _tenants_listed(self, future: Any) -> None:
        try:
            tenants: list[Tenant] = future.result()
        except Exception as exc:  # database down: keep serving the tenants we know
            log.warning("tenant refresh failed", extra={"error": repr(exc)})
            tenants = list(self.known.values())
        for tenant in tenants:
            self.known[tenant.id] = tenant
            self.drr.set_weight(tenant.id, tenant.weight)
            metrics.SCHED_WEIGHT.labels(tenant.id).set(tenant.weight)
            if tenant.id not in self.tenant_channels and self._connected and not self.stopping:
                self._open(tenant)

    def _open(self, tenant: Tenant) -> None:
        """One channel for the tenant's queue: declare it, then a recyclable consumer."""
        spec = topology.tenant_queue(tenant.id, tenant.max_backlog, self.settings)

        def on_message(_channel: Channel, method: Basic.Deliver, props: Any, body: bytes) -> None:
            self._on_message(consumer, method, body, readings_of(props))

        consumer = self.tenant_channels[tenant.id] = TenantConsumer(
            tenant.id, self.settings.scheduler_prefetch, queue=spec.name, on_message=on_message
        )

        def declare(channel: Channel, then: Callable[[], None]) -> None:
            consumer.channel = channel
            connection = self.connection
            if connection is None or not connection.is_open:
                return  # the consumer is opened again with the next connection
            # On a channel of its own: a queue of the earlier version (other arguments)
            # refuses the declaration, which must not close the consuming channel.
            declare_apart(
                connection,
                spec,
                lambda: then() if channel.is_open else None,
                lambda _queue: self.old_arguments.add(tenant.id),
            )

        self.open_consumer(
            Consumer(
                spec.name,
                consumer.prefetch,
                on_message,
                prepare=declare,
                start=consumer.consume,
                cancel=consumer.stop,
                on_close=lambda _channel, why: self._closed(consumer, why),
            )
        )
        metrics.SCHED_BUFFERED.labels(tenant.id).set_function(partial(self.drr.backlog, tenant.id))
        metrics.SCHED_PREFETCH.labels(tenant.id).set_function(partial(self._prefetch, tenant.id))

    def _prefetch(self, tenant: str) -> int:
        """The prefetch granted to ``tenant`` (the floor while its channel is re-opened)."""
        consumer = self.tenant_channels.get(tenant)
        return consumer.prefetch if consumer is not None else self.settings.scheduler_prefetch

    def _closed(self, consumer: TenantConsumer, why: Exception) -> None:
        # The broker requeues this channel's unacked deliveries: drop our copies. The
        # DRR buffers by tenant, so only the tenant's current consumer may drop them; a
        # late close of an older channel must not discard its successor's deliveries.
        consumer.reset()
        if self.tenant_channels.get(consumer.tenant) is not consumer:
            return
        del self.tenant_channels[consumer.tenant]
        self.drr.drop(consumer.tenant)
        if not self.stopping and self.connection is not None and self.connection.is_open:
            log.warning(
                "tenant channel closed", extra={"tenant": consumer.tenant, "why": repr(why)}
            )

    def on_connection_lost(self) -> None:
        for consumer in list(self.tenant_channels.values()):
            self._closed(consumer, ConnectionError("connection lost"))
        self._oldest = None

    # -- the hot path --------------------------------------------------------------
    def _on_message(
        self, consumer: TenantConsumer, method: Basic.Deliver, body: bytes, readings: int = 1
    ) -> None:
        consumer.delivered(method.delivery_tag, method.consumer_tag)
        self.drr.push(
            consumer.tenant,
            Delivery(consumer, method.delivery_tag, body, method.consumer_tag, readings),
            readings,
        )
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand batches to free writers: full ones at once, partial ones after linger."""
        drr, size = self.drr, self.settings.batch_size
        while self.inflight < self.settings.writers and len(drr):
            if drr.cost < size and not self.stopping:
                waited = time.monotonic() - (self._oldest or 0.0)
                if waited < self._linger_s:
                    if self._linger_timer is None:
                        self._linger_timer = self.ioloop.call_later(
                            self._linger_s - waited, self._linger_expired
                        )
                    return
            batch = drr.take(size)
            self._oldest = time.monotonic() if len(drr) else None
            self.inflight += 1
            metrics.SCHED_BATCH_SIZE.observe(sum(d.readings for _, d in batch))
            self._writers.submit(self._write, batch)

    def _linger_expired(self) -> None:
        self._linger_timer = None
        self._dispatch()

    # -- writer threads ----------------------------------------------------------
    def _write(self, batch: list[tuple[str, Delivery]]) -> None:
        bodies = [d.body for _, d in batch]

        def write() -> WriteOutcome:
            started = time.perf_counter()
            outcome = self.sink.write(bodies)  # raises: outcome unknown, retry the batch
            metrics.SCHED_WRITE_SECONDS.observe(time.perf_counter() - started)
            return outcome

        outcome: WriteOutcome | None
        try:
            outcome = self.retrying("write", write, on_error=lambda _e: metrics.SCHED_DB_UP.set(0))
            metrics.SCHED_DB_UP.set(1)
        except DrainExpired:
            outcome = None  # leave it unacked; the broker requeues it
        telemetry = self._coalesce(outcome)
        self.call_soon(lambda: self._written(batch, outcome, telemetry))

    def _coalesce(self, outcome: WriteOutcome | None) -> list[tuple[str, dict]]:
        """The batch's telemetry events (writer thread); never raises."""
        if self._events is None or outcome is None:
            return []
        # Duplicates are included: the first write's event may have died with a crash.
        durable = outcome.durable
        try:
            return coalesce.coalesce_readings(durable)
        except Exception:
            log.exception("coalescing events failed; the batch is stored, its events dropped")
            metrics.SCHED_EVENTS_DROPPED.inc(len(durable))
            return []

    def _written(
        self,
        batch: list[tuple[str, Delivery]],
        outcome: WriteOutcome | None,
        telemetry: list[tuple[str, dict]],
    ) -> None:
        self.inflight -= 1
        if outcome is not None:
            self._settle(batch, outcome)
        self._dispatch()
        if telemetry:
            self._publish_events(telemetry)

    def _publish_events(self, telemetry: list[tuple[str, dict]]) -> None:
        """Publish after the acks went out; a failure here costs events, never acks."""
        assert self._events is not None
        try:
            published, dropped = self._events.publish_all(telemetry)
        except Exception as exc:
            log.warning("publishing events failed", extra={"error": repr(exc)})
            published, dropped = 0, len(telemetry)
        metrics.SCHED_EVENTS.inc(published)
        if dropped:
            metrics.SCHED_EVENTS_DROPPED.inc(dropped)

    def _settle(self, batch: list[tuple[str, Delivery]], outcome: WriteOutcome) -> None:
        refused = set(outcome.refused)
        settled: dict[TenantConsumer, list[tuple[int, str]]] = defaultdict(list)
        stored: dict[str, int] = defaultdict(int)
        duplicates: dict[str, int] = defaultdict(int)
        for i, (tenant, delivery) in enumerate(batch):
            consumer = delivery.consumer
            channel = consumer.channel
            if channel is None or not channel.is_open:
                continue  # channel gone: the broker redelivers, the write is a duplicate
            # Readings written count even in a refused bundle: they are stored.
            stored[tenant] += outcome.stored_each[i]
            duplicates[tenant] += outcome.duplicates[i]
            if i in refused:
                channel.basic_nack(delivery.tag, requeue=False)
                metrics.SCHED_DEAD_LETTERED.labels(tenant).inc()
            settled[consumer].append((delivery.tag, delivery.source))
        for tenant, count in stored.items():
            if count:
                metrics.SCHED_STORED.labels(tenant).inc(count)
        for tenant, count in duplicates.items():
            if count:
                metrics.SCHED_DUPLICATES.labels(tenant).inc(count)
        for consumer, tags in settled.items():
            consumer.settle(tags)  # one multiple ack over the settled prefix

    # -- gauges ------------------------------------------------------------------
    def _tick_gauges(self) -> None:
        """Once a second: gauges, then broker backlogs, then the prefetch budget."""
        live = [
            (c, c.channel) for c in self.tenant_channels.values() if c.channel and c.channel.is_open
        ]
        self._depths_due = len(live)
        for consumer, channel in live:
            channel.queue_declare(
                topology.tenant_queue_name(consumer.tenant),
                passive=True,
                callback=partial(self._depth_answered, consumer),
            )

    def _depth_answered(self, consumer: TenantConsumer, frame: Any) -> None:
        self._backlog_seen(consumer, frame.method.message_count)

    def _backlog_seen(self, consumer: TenantConsumer, ready: int) -> None:
        consumer.ready = ready
        metrics.SCHED_BACKLOG.labels(consumer.tenant).set(ready)
        self._depths_due -= 1
        if self._depths_due == 0:  # every depth of this tick is in: share on fresh data
            self._share_prefetch()

    def _share_prefetch(self) -> None:
        """Give backlogged tenants their weighted share of the buffer budget."""
        weights = {
            t: (self.known[t].weight if t in self.known else 1) for t in self.tenant_channels
        }
        backlogged = {
            t: weights[t]
            for t, c in self.tenant_channels.items()
            if c.ready > 0 or self.drr.backlog(t) >= c.prefetch
        }
        shares = prefetch_shares(
            weights, backlogged, self.settings.scheduler_buffer, self.settings.scheduler_prefetch
        )
        for tenant, consumer in self.tenant_channels.items():
            wanted = shares[tenant]
            # Declined while the tenant's previous recycle is under way: the next tick retries.
            if worth_changing(consumer.prefetch, wanted):
                consumer.change_prefetch(wanted)

    # -- stopping ----------------------------------------------------------------
    def drained(self) -> bool:
        self._dispatch()  # stopping: partial batches go at once
        return not len(self.drr) and not self.inflight

    def after_drain(self) -> None:
        self._writers.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=False, cancel_futures=True)
        self.sink.close()  # the last device_state flush, while the database is still ours


def run(settings: Settings, sink: str = "mongo") -> None:
    """``fairway scheduler``: serve until SIGTERM, then drain (``sink="null"`` stores nothing)."""
    db = mongo.connect(settings)
    mongo.ensure_indexes(db)
    service = Scheduler(
        settings,
        MongoSink.from_settings(db, settings) if sink == "mongo" else NullSink(),
        lambda: registry.list_tenants(db),
    )
    service.serve(settings.metrics_port)
