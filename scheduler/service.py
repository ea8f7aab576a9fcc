"""The fair scheduler: tenant queues -> DRR -> write batches -> ack what is durable.

* One channel per tenant queue, so the broker keeps the backlog and the delivery tags
  of one channel belong to one tenant. Each channel's prefetch is its tenant's share
  of one buffer budget, re-shared by weight among backlogged tenants every second
  (:mod:`scheduler.prefetch`). The prefetch is per consumer, which classic and quorum
  queues both accept; a change recycles the tenant's consumer on its channel
  (:mod:`scheduler.tenant_channel`). Local buffers stay bounded by
  ``scheduler_buffer + tenants x scheduler_prefetch`` between re-shares, and by twice
  that while consumers are being recycled.
* Deliveries go into a :class:`~scheduler.drr.DeficitRoundRobin`; a batch is taken in
  DRR order when it is full or its oldest message has waited ``batch_linger_ms``,
  and only while fewer than ``writers`` batches are being written.
* Writers run on threads (the pika I/O loop never waits for MongoDB) and hand the
  outcome back with ``add_callback_threadsafe``. Stored and duplicate messages are
  settled; the ack is one ``multiple`` ack per channel over the settled prefix
  (:class:`~fairway.kernel.acks.AckWatermark`). Documents the database refuses for good are
  nacked without requeue and dead-letter to ``rejected``.
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
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pika
from pika.channel import Channel
from pika.spec import Basic

from fairway.amqp import side
from fairway.amqp.backoff import Backoff
from fairway.amqp.connection import parameters
from fairway.amqp.service import AmqpService
from fairway.domain import coalesce
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage.registry import Tenant
from scheduler import metrics
from scheduler.drr import DeficitRoundRobin
from scheduler.prefetch import prefetch_shares, worth_changing
from scheduler.sink import Sink, WriteOutcome
from scheduler.tenant_channel import TenantConsumer

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 15.0
GAUGE_INTERVAL_S = 1.0
FIRST_TICK_S = 0.2  # soon after connecting, so backlogged tenants get their share early


@dataclass(slots=True)
class Delivery:
    """A buffered message and where its ack goes."""

    consumer: TenantConsumer
    tag: int
    body: bytes
    source: str  # the consumer tag it came from (current or retiring consumer)


class Scheduler(AmqpService):
    """Consume every tenant queue and write fairly into a :class:`Sink`."""

    name = "fairway-scheduler"

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
        self.consumers: dict[str, TenantConsumer] = {}
        self.known: dict[str, Tenant] = {}
        self.inflight = 0
        self._writers = ThreadPoolExecutor(settings.writers, thread_name_prefix="writer")
        self._io = ThreadPoolExecutor(1, thread_name_prefix="tenants")
        self._linger_s = settings.batch_linger_ms / 1000.0
        self._oldest: float | None = None  # when the oldest buffered message arrived
        self._linger_timer: Any = None
        self._drain_deadline = float("inf")
        self._stop_event = threading.Event()
        self._timers_started = False
        self._depths_due = 0  # passive declares of this tick not yet answered
        self._events = (
            side.EventPublisher(parameters(settings, f"{self.name}-events"), self.ioloop)
            if settings.events_enabled
            else None
        )

    # -- tenants and channels ------------------------------------------------------
    def on_connected(self, connection: pika.SelectConnection) -> None:
        if self._events is not None:
            self._events.start()  # once; it reconnects on its own
        self._refresh_tenants()
        if not self._timers_started:  # one timer chain each for the process's lifetime
            self._timers_started = True
            self.ioloop.call_later(FIRST_TICK_S, self._tick_gauges)
            self.ioloop.call_later(self.settings.tenant_refresh_s, self._refresh_periodically)

    def _refresh_periodically(self) -> None:
        if self.stopping:
            return
        self._refresh_tenants()
        self.ioloop.call_later(self.settings.tenant_refresh_s, self._refresh_periodically)

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
            if tenant.id not in self.consumers and self._connected and not self.stopping:
                self._open(tenant)

    def _open(self, tenant: Tenant) -> None:
        spec = topology.tenant_queue(tenant.id, tenant.max_backlog, self.settings.queue_type)
        consumer = self.consumers[tenant.id] = TenantConsumer(
            tenant.id,
            self.settings.scheduler_prefetch,
            queue=spec.name,
            on_message=lambda _ch, method, _props, body: self._on_message(consumer, method, body),
        )

        def on_open(channel: Channel) -> None:
            consumer.channel = channel
            channel.add_on_close_callback(lambda _c, why: self._closed(consumer, why))
            # Per-consumer prefetch: quorum queues refuse a channel-wide (global) one.
            channel.basic_qos(prefetch_count=consumer.prefetch, global_qos=False, callback=on_qos)

        def on_qos(_frame: Any) -> None:
            consumer.channel.queue_declare(  # type: ignore[union-attr]
                spec.name, durable=True, arguments=spec.arguments(), callback=on_declared
            )

        def on_declared(_frame: Any) -> None:
            if self.stopping:
                return
            consumer.consume()

        assert self.connection is not None
        self.connection.channel(on_open_callback=on_open)

    def _closed(self, consumer: TenantConsumer, why: Exception) -> None:
        # The broker requeues this channel's unacked deliveries: drop our copies. The
        # DRR buffers by tenant, so only the tenant's current consumer may drop them; a
        # late close of an older channel must not discard its successor's deliveries.
        consumer.reset()
        if self.consumers.get(consumer.tenant) is not consumer:
            return
        del self.consumers[consumer.tenant]
        self.drr.drop(consumer.tenant)
        if not self.stopping and self.connection is not None and self.connection.is_open:
            log.warning(
                "tenant channel closed", extra={"tenant": consumer.tenant, "why": repr(why)}
            )

    def on_connection_lost(self) -> None:
        for consumer in list(self.consumers.values()):
            self._closed(consumer, ConnectionError("connection lost"))
        self._oldest = None

    # -- the hot path --------------------------------------------------------------
    def _on_message(self, consumer: TenantConsumer, method: Basic.Deliver, body: bytes) -> None:
        consumer.delivered(method.delivery_tag, method.consumer_tag)
        self.drr.push(
            consumer.tenant, Delivery(consumer, method.delivery_tag, body, method.consumer_tag)
        )
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand batches to free writers: full ones at once, partial ones after linger."""
        drr, size = self.drr, self.settings.batch_size
        while self.inflight < self.settings.writers and len(drr):
            if len(drr) < size and not self.stopping:
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
            metrics.SCHED_INFLIGHT_BATCHES.set(self.inflight)
            metrics.SCHED_BATCH_SIZE.observe(len(batch))
            self._writers.submit(self._write, batch)

    def _linger_expired(self) -> None:
        self._linger_timer = None
        self._dispatch()

    # -- writer threads ----------------------------------------------------------
    def _write(self, batch: list[tuple[str, Delivery]]) -> None:
        bodies = [d.body for _, d in batch]
        backoff = Backoff(base=0.1, cap=self.settings.db_backoff_max_s)
        outcome: WriteOutcome | None = None
        while outcome is None:
            started = time.perf_counter()
            try:
                outcome = self.sink.write(bodies)
            except Exception as exc:  # outcome unknown: retry the whole batch
                metrics.SCHED_DB_UP.set(0)
                if self.stopping and time.monotonic() > self._drain_deadline:
                    break  # leave it unacked; the broker requeues it
                delay = backoff.next()
                log.warning("write failed", extra={"error": repr(exc), "retry_s": delay})
                self._stop_event.wait(delay)
                continue
            metrics.SCHED_DB_UP.set(1)
            metrics.SCHED_WRITE_SECONDS.observe(time.perf_counter() - started)
        telemetry = self._coalesce(bodies, outcome)
        self.call_soon(lambda: self._written(batch, outcome, telemetry))

    def _coalesce(
        self, bodies: list[bytes], outcome: WriteOutcome | None
    ) -> list[tuple[str, dict]]:
        """The batch's telemetry events (writer thread); never raises."""
        if self._events is None or outcome is None:
            return []
        refused = set(outcome.refused)
        # Duplicates are included: the first write's event may have died with a crash.
        durable = [b for i, b in enumerate(bodies) if i not in refused]
        try:
            return coalesce.coalesce(durable)
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
        metrics.SCHED_INFLIGHT_BATCHES.set(self.inflight)
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
        duplicates = set(outcome.duplicates)
        settled: dict[TenantConsumer, list[tuple[int, str]]] = defaultdict(list)
        stored: dict[str, int] = defaultdict(int)
        for i, (tenant, delivery) in enumerate(batch):
            consumer = delivery.consumer
            if not consumer.live:
                continue  # channel gone: the broker redelivers, the write is a duplicate
            if i in refused:
                consumer.channel.basic_nack(delivery.tag, requeue=False)  # type: ignore[union-attr]
                metrics.SCHED_DEAD_LETTERED.labels(tenant).inc()
            elif i in duplicates:
                metrics.SCHED_DUPLICATES.labels(tenant).inc()
            else:
                stored[tenant] += 1
            settled[consumer].append((delivery.tag, delivery.source))
        for tenant, count in stored.items():
            metrics.SCHED_STORED.labels(tenant).inc(count)
        for consumer, tags in settled.items():
            consumer.settle(tags)  # one multiple ack over the settled prefix

    # -- gauges ------------------------------------------------------------------
    def _tick_gauges(self) -> None:
        """Once a second: gauges, then broker backlogs, then the prefetch budget."""
        live = [c for c in self.consumers.values() if c.live]
        self._depths_due = len(live)
        for tenant, consumer in self.consumers.items():
            metrics.SCHED_BUFFERED.labels(tenant).set(self.drr.backlog(tenant))
            metrics.SCHED_PREFETCH.labels(tenant).set(consumer.prefetch)
        for consumer in live:
            consumer.channel.queue_declare(  # type: ignore[union-attr]
                topology.tenant_queue_name(consumer.tenant),
                passive=True,
                callback=lambda f, c=consumer: self._backlog_seen(c, f.method.message_count),
            )
        if not self.stopping:
            self.ioloop.call_later(GAUGE_INTERVAL_S, self._tick_gauges)

    def _backlog_seen(self, consumer: TenantConsumer, ready: int) -> None:
        consumer.ready = ready
        metrics.SCHED_BACKLOG.labels(consumer.tenant).set(ready)
        self._depths_due -= 1
        if self._depths_due == 0:  # every depth of this tick is in: share on fresh data
            self._share_prefetch()

    def _share_prefetch(self) -> None:
        """Give backlogged tenants their weighted share of the buffer budget."""
        weights = {t: (self.known[t].weight if t in self.known else 1) for t in self.consumers}
        backlogged = {
            t: weights[t]
            for t, c in self.consumers.items()
            if c.ready > 0 or self.drr.backlog(t) >= c.prefetch
        }
        shares = prefetch_shares(
            weights, backlogged, self.settings.scheduler_buffer, self.settings.scheduler_prefetch
        )
        for tenant, consumer in self.consumers.items():
            wanted = shares[tenant]
            # Declined while the tenant's previous recycle is under way: the next tick retries.
            if worth_changing(consumer.prefetch, wanted) and consumer.change_prefetch(wanted):
                metrics.SCHED_PREFETCH.labels(tenant).set(wanted)

    # -- stopping ----------------------------------------------------------------
    def begin_stop(self) -> None:
        self._drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for consumer in self.consumers.values():
            consumer.stop()
        self._finish_drain()

    def _finish_drain(self) -> None:
        self._dispatch()  # stopping: partial batches go at once
        if (not len(self.drr) and not self.inflight) or time.monotonic() > self._drain_deadline:
            self._stop_event.set()
            self._writers.shutdown(wait=False, cancel_futures=True)
            self._io.shutdown(wait=False, cancel_futures=True)
            if self._events is not None:
                self._events.close()
            self.close()
        else:
            self.ioloop.call_later(0.02, self._finish_drain)
