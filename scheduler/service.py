"""The fair scheduler: tenant queues -> DRR -> write batches -> ack what is durable.

* One consumer per tenant queue, on a bounded pool of channels
  (:mod:`scheduler.channel_pool`, ``scheduler_channels``); the broker keeps the
  backlog. Each consumer's prefetch is its tenant's share of one buffer budget: the
  floor while the tenant is quiet, a weighted share once it is *backlogged*, i.e. it
  filled its prefetch (learned from deliveries, no queue is polled). The shares are
  recomputed when the set of backlogged tenants changes; once a second only the
  backlogged tenants are looked at, to see which stopped filling their prefetch
  (:mod:`scheduler.prefetch`). The prefetch is per consumer, which classic and quorum
  queues both accept; a change recycles the tenant's consumer on its channel
  (:mod:`scheduler.tenant_channel`). A message is a bundle, so the floor and the shares
  are also bounded in readings (``scheduler_buffer_readings``), turned into messages
  with the readings per message each tenant's deliveries carry (a tenant not heard from
  yet is assumed to send full bundles of ``bundle_max_readings``). Local buffers stay
  bounded by about ``2 x scheduler_buffer_readings`` readings (or one message per
  tenant where that is more) between re-shares, and by twice that while consumers are
  being recycled. A quiet tenant costs no periodic work.
* Deliveries are bundles of readings (``x-fairway-readings`` says how many; a message
  without it is one reading, the format before bundles, still read). They go into a
  :class:`~scheduler.drr.DeficitRoundRobin` that charges each its readings; a batch of
  whole bundles, up to the batch limit in readings, is taken in DRR order when it is
  full or its oldest message has waited ``batch_linger_ms``, and only while fewer than
  ``writers`` batches are being written. While all are, one *express* batch may be
  written on an extra writer, holding only light tenants (at most ``express_readings``
  buffered): a quiet tenant's readings do not wait for a backlogged tenant's batches.
  The limit starts at ``batch_size`` and grows up to ``batch_max`` while full batches
  are written within ``write_budget_ms`` (:mod:`scheduler.batch_budget`).
* Writers run on threads (the pika I/O loop never waits for MongoDB) and hand the
  outcome back with ``add_callback_threadsafe``. A bundle is settled once every one of
  its readings is stored or a duplicate; the ack is one ``multiple`` ack per channel
  over the settled prefix of the channel's tags, whichever tenants they are for, plus
  single acks for a tenant whose settled deliveries wait too long behind another's
  (:class:`~scheduler.channel_acks.ChannelAcks`). A bundle with a
  reading the database refuses for good (or that is not the relay's output) is nacked
  without requeue and dead-letters, whole, to ``rejected``.
* Database down: the writer retries the batch with capped backoff; nothing is acked,
  buffers fill to the prefetch and the broker stops delivering (backpressure).
* New tenants, weight changes and removals are found every ``tenant_refresh_s`` from
  the tenants' revision counter, reading only the records that changed
  (:mod:`fairway.domain.tenant_watch`); the whole list every ``tenant_resync_s``. A
  removed tenant's consumer is cancelled and its buffered deliveries requeued: its
  queue keeps what it holds.
* SIGTERM: cancel consumers, flush every buffered message, ack, close. Anything not
  written by the drain deadline stays unacked and the broker requeues it.
* Events (``events_enabled``): a writer coalesces its written batch into at most one
  ``telemetry.<tenant>.<device>`` event per device (:func:`fairway.domain.coalesce.coalesce`);
  the I/O loop publishes them *after* the batch's acks, on a separate connection, so
  a blocked or failing publisher can neither lose nor delay an ack. Best-effort:
  events are transient and dropped (counted) while the publisher is down.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pika
from pika.spec import Basic

from fairway.amqp import side
from fairway.amqp.connection import Brokers
from fairway.amqp.service import AmqpService, DrainExpired
from fairway.domain import coalesce
from fairway.domain.tenant_watch import (
    ListedTenants,
    RegistryTenants,
    TenantChanges,
    TenantSource,
    TenantWatch,
)
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage import mongo
from fairway.storage.registry import Tenant
from scheduler import metrics
from scheduler.batch_budget import BatchBudget
from scheduler.channel_pool import ChannelPool
from scheduler.drr import DeficitRoundRobin
from scheduler.prefetch import floor_prefetch, prefetch_shares, worth_changing
from scheduler.sink import (
    MalformedOutcome,
    MongoSink,
    NullSink,
    Sink,
    WriteOutcome,
    check_outcome,
)
from scheduler.tenant_channel import TenantConsumer, settle_together

log = logging.getLogger(__name__)

BACKLOG_CHECK_S = 1.0  # how often backlogged tenants are checked for still filling up
RESHARE_DELAY_S = 0.05  # tenants that fill up together are re-shared together
READINGS_EACH_WEIGHT = 0.125  # of a delivery in a tenant's moving readings per message


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
        list_tenants: Callable[[], list[Tenant]] | TenantSource,
    ) -> None:
        super().__init__(settings)
        self.sink = sink
        source = list_tenants if not callable(list_tenants) else ListedTenants(list_tenants)
        self.watch = TenantWatch(source, settings.tenant_resync_s)
        self.drr: DeficitRoundRobin[Delivery] = DeficitRoundRobin(settings.drr_quantum)
        self.pool = ChannelPool(
            settings,
            self._on_delivery,
            self._consumers_lost,
            lambda tenant: self.old_arguments.add(tenant),
            self._floor,
        )
        self.known: dict[str, Tenant] = {}
        self.backlogged: set[str] = set()  # filled their prefetch: they share the budget
        self._raised: set[str] = set()  # prefetch above the floor (to bring back down)
        self._refloor: set[str] = set()  # its floor changed with what it sends: re-share
        self._reshare_at: Any = None  # the pending re-share (timer), if any
        self.inflight = 0
        self.express_busy = False  # the express batch is being written
        self._light_until = 0.0  # light tenants count as active until then (monotonic)
        self._light_hold_s = settings.express_hold_ms / 1000.0
        self._cap = settings.regular_batch_cap  # read on every dispatch: derived once
        self._holds_back = bool(self._cap or settings.writers_beside_express)
        self._hold_timer: Any = None  # wakes the writers the hold held back
        # Tenants whose queue was declared by an earlier version with other bounds (before
        # the byte bound per reading): consumed as they are.
        self.old_arguments: set[str] = set()
        metrics.SCHED_OLD_ARGUMENTS.set_function(lambda: len(self.old_arguments))
        # Tenants whose buffered and prefetch gauges are exposed (added to the pool).
        self._gauged: set[str] = set()
        metrics.TENANT_GAUGES.source = self._tenant_gauges
        express = 1 if settings.express_readings else 0
        self._writers = ThreadPoolExecutor(settings.writers + express, thread_name_prefix="writer")
        self._io = ThreadPoolExecutor(1, thread_name_prefix="tenants")
        self._looking = False  # a tenant look is under way on the thread
        self._linger_s = settings.batch_linger_ms / 1000.0
        self.batch_limit = BatchBudget(
            settings.batch_size, settings.batch_max, settings.write_budget_ms / 1000.0
        )
        metrics.SCHED_BATCH_LIMIT.set_function(lambda: self.batch_limit.limit)
        self._oldest: float | None = None  # when the oldest buffered message arrived
        self._linger_timer: Any = None
        self._events = (
            side.EventPublisher(Brokers(settings, f"{self.name}-events"), self.ioloop)
            if settings.events_enabled
            else None
        )
        if self._events is not None:
            self.add_side_connection(self._events)  # it reconnects on its own
        metrics.SCHED_INFLIGHT_BATCHES.set_function(lambda: self.inflight)
        metrics.SCHED_TENANTS.set_function(lambda: len(self.pool.consumers))
        metrics.SCHED_ACTIVE_TENANTS.set_function(
            lambda: sum(1 for c in list(self.pool.consumers.values()) if c.unacked)
        )
        metrics.SCHED_BACKLOGGED_TENANTS.set_function(lambda: len(self.backlogged))
        metrics.SCHED_BUFFERED_READINGS.set_function(lambda: self.drr.cost)
        metrics.SCHED_PREFETCH_READINGS.set_function(self._prefetch_readings)
        self.every(BACKLOG_CHECK_S, self._check_backlogged)
        metrics.SCHED_EXPRESS_INFLIGHT.set_function(lambda: int(self.express_busy))
        metrics.SCHED_WRITERS_ALLOWED.set_function(self._regular_writers)
        metrics.SCHED_LIGHT_ACTIVE.set_function(lambda: int(self._holding_back()))
        self.every(settings.tenant_refresh_s, self._refresh_tenants)

    @property
    def tenant_channels(self) -> dict[str, TenantConsumer]:
        """The current consumer of every tenant."""
        return self.pool.consumers

    # -- tenants and channels ------------------------------------------------------
    def on_connected(self, connection: pika.SelectConnection) -> None:
        self.pool.connected(connection)
        self._refresh_tenants()

    def _refresh_tenants(self) -> None:
        """Look for tenant changes off the I/O loop; new ones get a consumer."""
        if self.stopping or not self._connected or self._looking:
            return
        self._looking = True
        future = self._io.submit(self.watch.poll)
        future.add_done_callback(lambda f: self.call_soon(lambda: self._tenants_listed(f)))

    @property
    def _connected(self) -> bool:
        return self.connection is not None and self.connection.is_open

    def _tenants_listed(self, future: Any) -> None:
        self._looking = False
        try:
            changes: TenantChanges | None = future.result()
        except Exception as exc:  # database down: keep serving the tenants we know
            log.warning("tenant refresh failed", extra={"error": repr(exc)})
            return
        if changes is None:
            return
        metrics.TENANT_READS.labels("full" if changes.full else "changes").inc()
        reshare = False
        for tenant in changes.tenants:
            before = self.known.get(tenant.id)
            self.known[tenant.id] = tenant
            self.drr.set_weight(tenant.id, tenant.weight)
            if before is not None and before.weight != tenant.weight:
                reshare = reshare or tenant.id in self.backlogged
        # Consumers start once every tenant of the answer is known: their floors divide
        # the readings budget among all of them.
        for tenant in changes.tenants:
            if tenant.id not in self.pool.consumers and not self.stopping:
                self.pool.add(tenant)
                self._gauged.add(tenant.id)
        for tenant_id in changes.removed:
            if tenant_id not in {t.id for t in changes.tenants}:
                self._remove_tenant(tenant_id)
        if reshare:
            self._schedule_reshare()

    def _remove_tenant(self, tenant: str) -> None:
        """A removed tenant: cancel its consumer, drop its DRR state, requeue what it buffered.

        Readings still in its queue stay there, neither stored nor dropped (served again
        if the tenant is created again); batches being written when the removal is
        learned are stored and acked as usual (docs/architecture.md, "Removing a tenant").
        """
        self.known.pop(tenant, None)
        consumer = self.pool.remove(tenant)
        buffered = self.drr.forget(tenant)
        for delivery in buffered:
            delivery.consumer.requeue(delivery.tag, delivery.source)
        if not len(self.drr):
            self._oldest = None
        self.backlogged.discard(tenant)
        self._raised.discard(tenant)
        self._refloor.discard(tenant)
        self._gauged.discard(tenant)
        # Its per-tenant series go too: tenants that come and go must not grow them.
        for labelled in (metrics.SCHED_BACKLOG, metrics.SCHED_DEAD_LETTERED):
            with contextlib.suppress(KeyError):
                labelled.remove(tenant)
        for rows in (metrics.SCHED_STORED, metrics.SCHED_DUPLICATES, metrics.SCHED_LAG_SECONDS):
            rows.remove(tenant)
        metrics.SCHED_TENANTS_REMOVED.inc()
        log.warning(
            "tenant removed; its queue is no longer consumed",
            extra={"tenant": tenant, "requeued": len(buffered), "consumed": consumer is not None},
        )

    def _tenant_gauges(self) -> list[tuple[str, dict[str, float]]]:
        """Weight of every known tenant; buffered and prefetch of those in the pool."""
        known, gauged = list(self.known.items()), set(self._gauged)  # one step each
        rows = {tenant: {"fairway_scheduler_weight": float(t.weight)} for tenant, t in known}
        for tenant in gauged:
            row = rows.setdefault(tenant, {})
            row["fairway_scheduler_buffered"] = self.drr.backlog(tenant)
            row["fairway_scheduler_prefetch"] = self._prefetch(tenant)
        return list(rows.items())

    def _prefetch(self, tenant: str) -> int:
        """The prefetch granted to ``tenant`` (the floor while its channel is re-opened)."""
        consumer = self.pool.consumers.get(tenant)
        return consumer.prefetch if consumer is not None else self.settings.scheduler_prefetch

    def _floor(self, tenant: str, readings_each: float) -> int:
        """``tenant``'s prefetch while it has no backlog (``readings_each`` 0: not heard
        from yet, assumed to send full bundles)."""
        settings = self.settings
        return floor_prefetch(
            settings.scheduler_prefetch,
            settings.scheduler_buffer_readings,
            len(self.known),
            readings_each or settings.bundle_max_readings,
        )

    def _prefetch_readings(self) -> float:
        """Readings every tenant's prefetch allows, summed (the metric; O(tenants))."""
        prior = self.settings.bundle_max_readings
        consumers = list(self.pool.consumers.values())  # one step: read from the scrape thread
        return sum(c.prefetch * (c.readings_each or prior) for c in consumers)

    def _learned(self, consumer: TenantConsumer) -> None:
        """``consumer``'s first delivery told its readings per message: a quiet tenant's
        floor follows (e.g. up from the full-bundle guess for single readings)."""
        if consumer.backlogged:
            return  # its share is sized at the re-share its backlog started
        if worth_changing(consumer.prefetch, self._floor(consumer.tenant, consumer.readings_each)):
            self._refloor.add(consumer.tenant)
            self._schedule_reshare()

    def _consumers_lost(self, consumers: list[TenantConsumer]) -> None:
        """Their channel closed: the broker requeues what they held; drop our copies.

        The DRR buffers by tenant; the pool gives each tenant a fresh consumer when the
        channel re-opens, so these are still the tenants' current ones here.
        """
        for consumer in consumers:
            self.drr.drop(consumer.tenant)
            if consumer.tenant in self.backlogged:
                self.backlogged.discard(consumer.tenant)
                metrics.SCHED_BACKLOG.labels(consumer.tenant).set(0)
            self._raised.discard(consumer.tenant)
            self._refloor.discard(consumer.tenant)
        if not len(self.drr):
            self._oldest = None

    def on_connection_lost(self) -> None:
        self._consumers_lost(self.pool.lost())
        self._oldest = None

    # -- the hot path --------------------------------------------------------------
    def _on_delivery(
        self,
        consumer: TenantConsumer,
        _channel: Any,
        method: Basic.Deliver,
        props: Any,
        body: bytes,
    ) -> None:
        """pika's consumer callback, bound to the tenant's consumer by the pool."""
        self._on_message(consumer, method, body, readings_of(props))

    def _on_message(
        self, consumer: TenantConsumer, method: Basic.Deliver, body: bytes, readings: int = 1
    ) -> None:
        consumer.delivered(method.delivery_tag, method.consumer_tag)
        if consumer.removed:  # on the wire when its consumer was cancelled
            consumer.requeue(method.delivery_tag, method.consumer_tag)
            return
        each = consumer.readings_each
        if each:
            consumer.readings_each = each + (readings - each) * READINGS_EACH_WEIGHT
        else:
            consumer.readings_each = readings
            self._learned(consumer)
        if consumer.saturated and not consumer.backlogged:
            self._backlog_started(consumer)
        self.drr.push(
            consumer.tenant,
            Delivery(consumer, method.delivery_tag, body, method.consumer_tag, readings),
            readings,
        )
        if self._oldest is None:
            self._oldest = time.monotonic()
        # A backlogged tenant's delivery cannot make an express batch possible (they are
        # never taken there): the light tenants' buffers are looked at only on a light
        # delivery or when a writer or the batches change (see _dispatch).
        self._dispatch(express=not consumer.backlogged)

    def _dispatch(self, express: bool = True) -> None:
        """Hand batches to free writers: full ones at once, partial ones after linger;
        then, if ``express`` or a batch went out, the express batch."""
        if self.stop_event.is_set():
            # The drain is over and the writers are shut down (a write that outlived the
            # deadline ends here): what is buffered goes back with the connection.
            return
        drr, size = self.drr, self.batch_limit.limit
        writers, cap = self._regular_writers(), self._cap
        if cap and cap < size and self._capping():
            size = cap  # the express write shares the database with smaller batches
        # A capped batch is never "full" to the budget: it may shrink the limit (written
        # over budget), never grow it (its speed says nothing of a batch at the limit).
        measured = size == self.batch_limit.limit
        while self.inflight < writers and len(drr):
            full = drr.cost >= size
            if not full and not self.stopping:
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
            express = True  # every writer may be busy now, and the buffers changed
            metrics.SCHED_BATCH_SIZE.observe(sum(d.readings for _, d in batch))
            self._writers.submit(self._write, batch, False, full and measured)
        if express:
            self._dispatch_express()

    def _light_active(self) -> bool:
        """An express batch is in flight or ended less than ``express_hold_ms`` ago (never
        while stopping: a drain uses every writer)."""
        if self.stopping:
            return False
        return self.express_busy or (
            self._light_until > 0.0 and time.monotonic() < self._light_until
        )

    def _capping(self) -> bool:
        """Regular batches are capped now: light tenants active beside a backlogged one.
        (With no tenant backlogged, as in a drain the relay paces, every batch holds light
        tenants' readings: a cap would only make each reading's write dearer.)"""
        return bool(self.backlogged) and self._light_active()

    def _holding_back(self) -> bool:
        """Either lever holds regular batches back now (the light-active gauge): the cap
        only while below the write budget's limit, as :meth:`_dispatch` applies it."""
        if self.settings.writers_beside_express and self._light_active():
            return True
        cap = self._cap
        return bool(cap) and cap < self.batch_limit.limit and self._capping()

    def _hold_expired(self) -> None:
        """The hold may be over: give the writers it held back their batches (else they
        would wait for the next write to end or delivery to come)."""
        self._hold_timer = None
        left = self._light_until - time.monotonic()
        if left > 0:  # another express batch ended since: wait for its hold
            self._hold_timer = self.ioloop.call_later(left, self._hold_expired)
            return
        self._dispatch()

    def _regular_writers(self) -> int:
        """Regular batches that may be written at once now (the metric, and express's
        test of "every writer busy"): fewer beside active light tenants."""
        writers, beside = self.settings.writers, self.settings.writers_beside_express
        if beside and beside < writers and self._light_active():
            return beside
        return writers

    def _dispatch_express(self) -> None:
        """Every writer busy: write the light tenants' readings in one more batch.

        A quiet tenant's readings would otherwise wait for a writer to finish a batch of
        a backlogged tenant, then share the next batch (and its write time) with it.
        Backlogged tenants (those filling their prefetch) are never taken here, whatever
        they buffer at the moment, so the extra writer holds at most
        ``express_readings`` readings of light tenants.
        """
        limit = self.settings.express_readings
        if self.stop_event.is_set():
            return  # the writers are shut down (see _dispatch)
        if not limit or self.express_busy or self.inflight < self._regular_writers():
            return
        batch = self.drr.take_light(limit, exclude=self.backlogged)
        if not batch:
            return
        if not len(self.drr):
            self._oldest = None
        self.express_busy = True
        metrics.SCHED_EXPRESS_BATCHES.inc()
        metrics.SCHED_BATCH_SIZE.observe(sum(d.readings for _, d in batch))
        self._writers.submit(self._write, batch, True)

    def _linger_expired(self) -> None:
        self._linger_timer = None
        self._dispatch()

    # -- writer threads ----------------------------------------------------------
    def _write(
        self, batch: list[tuple[str, Delivery]], express: bool = False, full: bool = False
    ) -> None:
        bodies = [d.body for _, d in batch]
        took: list[float] = []  # the successful attempt's write time

        def write() -> WriteOutcome:
            started = time.perf_counter()
            answer = self.sink.write(bodies)  # raises: outcome unknown, retry the batch
            took.append(time.perf_counter() - started)
            metrics.SCHED_WRITE_SECONDS.observe(took[-1])
            try:
                return check_outcome(answer, len(bodies))
            except MalformedOutcome as exc:
                # A sink's bug: a failed write (retried, nothing acked), never a crash of
                # the I/O loop that settles by index.
                metrics.SCHED_MALFORMED_OUTCOMES.inc()
                log.error("sink returned a malformed outcome", extra={"error": str(exc)})
                raise

        def failed(exc: Exception) -> None:
            if not isinstance(exc, MalformedOutcome):
                metrics.SCHED_DB_UP.set(0)

        outcome: WriteOutcome | None
        try:
            outcome = self.retrying("write", write, on_error=failed)
            metrics.SCHED_DB_UP.set(1)
        except DrainExpired:
            outcome = None  # leave it unacked; the broker requeues it
        telemetry = self._coalesce(outcome)
        if outcome is not None and not express:
            readings = sum(d.readings for _, d in batch)
            self.call_soon(lambda: self.batch_limit.observe(readings, took[-1], full))
        self.call_soon(lambda: self._written(batch, outcome, telemetry, express))

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
        express: bool = False,
    ) -> None:
        if express:
            self.express_busy = False
            self._light_until = time.monotonic() + self._light_hold_s
            if self._holds_back and self._hold_timer is None:
                self._hold_timer = self.ioloop.call_later(self._light_hold_s, self._hold_expired)
        else:
            self.inflight -= 1
        if outcome is not None:
            try:
                self._settle(batch, outcome)
            except Exception:
                # Never let a settle bug end the I/O loop: the connection goes, the broker
                # requeues every unacked delivery, the next write finds them stored.
                log.exception("settling a written batch failed; reconnecting")
                self.reconnect_on_channel_close(None, RuntimeError("settle failed"))
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
        live: dict[TenantConsumer, bool] = {}  # asked once per consumer, not per delivery
        for i, (tenant, delivery) in enumerate(batch):
            consumer = delivery.consumer
            ok = live.get(consumer)
            if ok is None:
                ok = live[consumer] = consumer.live
            if not ok:
                continue  # channel gone: the broker redelivers, the write is a duplicate
            # Readings written count even in a refused bundle: they are stored.
            stored[tenant] += outcome.stored_each[i]
            duplicates[tenant] += outcome.duplicates[i]
            if i in refused:
                consumer.refuse(delivery.tag)
                metrics.SCHED_DEAD_LETTERED.labels(tenant).inc()
            settled[consumer].append((delivery.tag, delivery.source))
        metrics.SCHED_STORED.inc_many((t, n) for t, n in stored.items() if n)
        metrics.SCHED_DUPLICATES.inc_many((t, n) for t, n in duplicates.items() if n)
        # One settle per channel (its tenants' tags together): see settle_together.
        channels: dict[int, dict[TenantConsumer, list[tuple[int, str]]]] = defaultdict(dict)
        for consumer, tags in settled.items():
            channels[id(consumer.acks)][consumer] = tags
        for together in channels.values():
            settle_together(together)

    # -- backlogged tenants and the prefetch budget ---------------------------------
    def _backlog_started(self, consumer: TenantConsumer) -> None:
        """``consumer`` filled its prefetch: more may wait at the broker."""
        consumer.backlogged = True
        self.backlogged.add(consumer.tenant)
        self._schedule_reshare()

    def _check_backlogged(self) -> None:
        """Once a second, the backlogged tenants only: which stopped filling their prefetch."""
        if not self.backlogged and not self._reshare_pending:
            return
        ended = []
        resized = False  # a backlogged tenant's bundles grew or shrank since its share
        for tenant in self.backlogged:
            consumer = self.pool.consumers.get(tenant)
            if consumer is None:
                ended.append(tenant)
            elif consumer.saturated or (
                consumer.prefetch > 1 and consumer.unacked >= consumer.prefetch
            ):
                consumer.saturated = False
                self.pool.depth(tenant, metrics.SCHED_BACKLOG.labels(tenant).set)
                resized = resized or worth_changing(consumer.sized_for, consumer.readings_each)
            else:
                consumer.backlogged = False
                ended.append(tenant)
        self.backlogged.difference_update(ended)
        for tenant in ended:
            metrics.SCHED_BACKLOG.labels(tenant).set(0)
        if ended:
            self._dispatch_express()  # their buffers may go express now
        if ended or resized or self._reshare_pending:
            self._share_prefetch()

    _reshare_pending = False  # a change was declined (a recycle under way): retry

    def _schedule_reshare(self) -> None:
        if self._reshare_at is None:
            self._reshare_at = self.ioloop.call_later(RESHARE_DELAY_S, self._share_prefetch)

    def _share_prefetch(self) -> None:
        """Give backlogged tenants their weighted share of the buffer budget, the others
        (those above it) the floor; only tenants that are or were backlogged are visited."""
        if self._reshare_at is not None:
            self.ioloop.remove_timeout(self._reshare_at)
            self._reshare_at = None
        settings = self.settings
        consumers = self.pool.consumers
        visit = self.backlogged | self._raised | self._refloor
        self._refloor.clear()
        each: dict[str, float] = {}
        floors: dict[str, int] = {}
        for tenant in visit:
            consumer = consumers.get(tenant)
            if consumer is None:
                self._raised.discard(tenant)
                continue
            each[tenant] = consumer.readings_each or settings.bundle_max_readings
            floors[tenant] = self._floor(tenant, consumer.readings_each)
        weight = {t: (self.known[t].weight if t in self.known else 1) for t in self.backlogged}
        shares = prefetch_shares(
            floors,
            {t: w for t, w in weight.items() if t in floors},
            settings.scheduler_buffer,
            settings.scheduler_buffer_readings,
            each,
        )
        self._reshare_pending = False
        for tenant, wanted in shares.items():
            consumer = consumers[tenant]
            consumer.sized_for = each[tenant]
            # Declined while the tenant's previous recycle is under way: retried.
            if worth_changing(consumer.prefetch, wanted) and not consumer.change_prefetch(wanted):
                self._reshare_pending = self._reshare_pending or consumer.live
                if consumer.live:
                    self._refloor.add(tenant)  # visited again, whether above its floor or not
            if consumer.prefetch > floors[tenant]:
                self._raised.add(tenant)
            else:
                self._raised.discard(tenant)

    # -- stopping ----------------------------------------------------------------
    def begin_stop(self) -> None:
        """Cancel every tenant consumer, then the base drain."""
        self.pool.stop()
        super().begin_stop()

    def drained(self) -> bool:
        self._dispatch()  # stopping: partial batches go at once
        done = not len(self.drr) and not self.inflight and not self.express_busy
        if done:
            # The last batch's acks may still wait for the next loop turn, which would
            # find the channels closing: send them before the drain closes them.
            self.pool.flush_acks()
        return done

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
        RegistryTenants(db),
    )
    service.serve(settings.metrics_port)
