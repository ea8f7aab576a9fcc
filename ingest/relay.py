"""The auth/relay consumer: validate each telemetry message and shard it by tenant.

It consumes every tenant's ``ingest.<tenant>`` (its devices' messages, routed there by
one binding per device) and the shared ``ingest`` (what matches no device binding:
unknown devices, malformed routing keys), all on one channel, each queue with its own
consumer and per-consumer prefetch: ``relay_tenant_prefetch`` per tenant queue,
``relay_prefetch`` on ``ingest``. One tenant's flood can thus hold at most its prefetch
in the relay while the broker keeps delivering the other tenants' messages; the relay
holds at most ``relay_prefetch + tenants x relay_tenant_prefetch`` deliveries
(``fairway_relay_prefetch_bound``). New tenants are found every ``tenant_refresh_s``
by the scheduler's versioned look (:mod:`fairway.domain.tenant_watch`): one read of the
tenants' revision counter, the changed records only when it moved, the whole list every
``tenant_resync_s`` (the first look also takes the tenants named by devices, so devices
of a removed tenant are still refused as ``unknown_tenant``); tenant queues are
declared (idempotently) and consumed one after another, so each consumer starts under
its own ``basic.qos``. A tenant is never dropped while the process runs: a removed
tenant's devices keep routing to its ingest queue, whose messages are then refused.

What happens to every delivery (one reading, or a device batch of several:
:mod:`fairway.kernel.contract`):

* refused whole by the contract or the registry -> published to ``rejected`` with
  ``x-fairway-reason``; the original is acked after that publish is confirmed.
* each accepted reading -> added to its tenant's open *bundle*
  (:mod:`ingest.bundler`), published to ``tenants`` (routing key = tenant id,
  ``mandatory``) as one message of many readings when full (count, bytes) or after
  ``bundle_linger_ms``; one bundle holds readings of many deliveries, and a device
  batch's accepted readings (whatever the rates and the contract left of it) are added
  together and stay in one bundle (:meth:`ingest.bundler.Bundler.add_batch`: the
  scheduler's sink stores them as one document), split only if they alone would exceed
  ``broker_max_message_bytes`` (``fairway_relay_batches_split_total``);
* each refused reading of a batch (contract, or beyond the device's rate or its
  tenant's, ``tenant_rate_limited``: :class:`ingest.ratelimit.TenantRates`) -> published
  on its own to ``rejected`` with its reason and ``x-fairway-index``;
* the original is acked once every publish it led to (each bundle holding one of its
  readings, each refusal) is confirmed.
* the tenant queue is full (``basic.nack``) or missing (``basic.return``) for a bundle
  -> each of its readings is published to ``rejected`` as ``tenant_backlog_full`` /
  ``unroutable`` on its own (a single reading's original body; a batch's reading as
  :func:`~fairway.kernel.contract.tenant_message`, with its index), then its delivery
  is acked once settled.
* refused beyond the device's or the tenant's refusal budget -> counted in
  ``fairway_relay_rejected_over_budget_total{tenant, reason}`` and acked, not kept:
  one party's garbage cannot crowd everyone else's refusals out of ``rejected``. Those
  acks go at ``relay_refused_pace`` per ingest queue; beyond, the ack is held (the
  queue's prefetch window fills and the broker stops delivering that queue), and the
  deliveries settled behind a held one are acked one by one so no other queue waits.
  A device refused beyond its budget for long (``FAIRWAY_QUARANTINE_*``) is
  quarantined (:mod:`ingest.quarantine`): its connections closed, its logins refused;
  what it queued before is still refused as above, at the pace.
* ``rejected`` itself is full -> counted in ``fairway_relay_rejected_dropped_total``
  and logged, then acked: a hostile flood must not stall ingestion.
* the relay dies anywhere in between -> the original was not acked, so the broker
  redelivers it; a second copy in a tenant queue (in another bundle) is a duplicate the
  scheduler's idempotent write absorbs; an open bundle dies with the relay, its
  readings' originals unacked.

Confirms stream: every delivery has at most one unconfirmed publish per reading, so
the confirm window is the prefetch times ``max_batch_readings`` (far fewer messages:
bundles). Acks use
:class:`fairway.kernel.acks.AckWatermark`, because registry look-ups let deliveries
finish out of order.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import orjson
from pika.channel import Channel
from pika.spec import Basic, BasicProperties
from pymongo.database import Database

from fairway.amqp.service import AmqpService, Consumer
from fairway.domain.tenant_watch import RegistryTenants, TenantWatch
from fairway.kernel import topology
from fairway.kernel.acks import AckWatermark
from fairway.kernel.contract import (
    Message,
    Reading,
    bundle_part,
    check_sender,
    parse_message,
    tenant_message,
)
from fairway.kernel.ids import is_valid_id
from fairway.kernel.metrics import ChildCache
from fairway.kernel.reasons import Reason, Rejection
from fairway.kernel.settings import Settings
from fairway.storage import mongo
from fairway.storage.registry import Device
from ingest import metrics
from ingest.bundler import CAUSES, Bundler
from ingest.quarantine import Quarantiner
from ingest.ratelimit import DEVICE_SPENT, Pacer, RateLimiter, RefusalBudget, TenantRates
from ingest.registry import MISSING, DeviceRegistry, _Missing

log = logging.getLogger(__name__)

# A refused delivery costs the refusal pace one unit, plus one per KiB of its body: what
# the relay spends on it grows with its size (receiving a 120 KB body is most of it).
PACE_BYTES = 1024


class _Parked:
    """A delivery waits unread for its device's registry answer (:meth:`Relay._released`)."""


PARKED: Final = _Parked()


@dataclass(slots=True)
class Delivery:
    """One delivery and its publishes not yet confirmed: acked when none is left."""

    tag: int
    remaining: int
    queue: str = ""  # the ingest queue it came from: the refusal pace's key
    size: int = 0  # its body's bytes: what it costs the refusal pace


@dataclass(slots=True)
class Pending:
    """A refusal published to ``rejected``, awaiting its confirm (readings travel in bundles)."""

    delivery: Delivery
    routing_key: str
    body: bytes
    device: str | None
    tenant: str | None
    reason: Reason
    index: int | None = None  # the reading's position in a device batch


@dataclass(slots=True)
class Item:
    """One reading in a bundle: whose delivery it settles, and its refusal if refused."""

    delivery: Delivery
    routing_key: str
    device: str
    reading: Reading
    received: float
    body: bytes | None  # a single reading's original body (None: a batch's reading)
    index: int | None  # the reading's position in a device batch


@dataclass(slots=True)
class BundlePending:
    """A bundle awaiting its confirm: each of its readings settles with it."""

    tenant: str
    items: list[Item]
    body: bytes = b""
    attempts: int = 0  # publishes after a nack so far


class Relay(AmqpService):
    """Consume ``ingest``; republish to ``tenants`` or ``rejected``; ack after confirm."""

    name = "fairway-relay"

    def __init__(self, settings: Settings, db: Database) -> None:
        super().__init__(settings)
        self.registry = DeviceRegistry(
            db,
            ttl_s=settings.device_cache_ttl_s,
            max_size=settings.device_cache_size,
            call_soon=self.call_soon,
            call_later=self.ioloop.call_later,
        )
        self.rate = RateLimiter(
            settings.device_rate, settings.device_burst, settings.device_cache_size
        )
        self.tenant_rates = TenantRates(
            settings.tenant_rate,
            settings.tenant_burst,
            settings.max_batch_readings,
            settings.device_cache_size,
        )
        self.refusals = RefusalBudget(
            settings.rejected_device_rate,
            settings.rejected_device_burst,
            settings.rejected_tenant_rate,
            settings.rejected_tenant_burst,
            settings.device_cache_size,
        )
        self.quarantiner = Quarantiner(settings, db)
        # Burst = one second's worth; the debt is bounded by each queue's prefetch window.
        self.pace = Pacer(
            settings.relay_refused_pace, settings.relay_refused_pace, settings.device_cache_size
        )
        # Refused deliveries whose ack the pace holds back, by delivery tag.
        self._held: dict[int, Delivery] = {}
        self._queues: dict[str, str] = {}  # consumer tag -> queue, on the current channel
        if settings.device_burst < settings.max_batch_readings:
            log.warning(
                "FAIRWAY_DEVICE_BURST is below FAIRWAY_MAX_BATCH_READINGS: a full device batch"
                " can never be accepted whole (its last readings are refused as rate_limited)",
                extra={"burst": settings.device_burst, "batch": settings.max_batch_readings},
            )
        if 0 < settings.tenant_burst < settings.max_batch_readings:
            log.warning(
                "FAIRWAY_TENANT_BURST is below FAIRWAY_MAX_BATCH_READINGS: a full device batch"
                " can never be accepted whole (its last readings are refused as"
                " tenant_rate_limited)",
                extra={"burst": settings.tenant_burst, "batch": settings.max_batch_readings},
            )
        self.db = db
        self._ingest = Consumer(
            topology.INGEST,
            settings.relay_prefetch,
            self._on_message,
            prepare=self._confirm_mode,
            start=self._start_ingest,
        )
        # Tenant queues consumed (or being opened) on the current channel; every tenant
        # ever listed (kept across reconnects); tenants waiting for their turn to open.
        self._tenant_consumers: dict[str, Consumer] = {}
        self._tenants: set[str] = set()
        self._to_open: deque[str] = deque()
        self._opening: str | None = None
        self._ready = False  # the channel consumes ``ingest``: tenant queues may open
        self._orphans_listed = False
        self.watch = TenantWatch(RegistryTenants(db), settings.tenant_resync_s)
        self._looking = False  # a look is under way on the lister thread
        self._redeclare: set[str] = set()  # queues the broker deleted: declared again
        self._lister = ThreadPoolExecutor(1, thread_name_prefix="tenants")
        self._pending: OrderedDict[int, Pending | BundlePending] = OrderedDict()
        self.bundler: Bundler[Item] = Bundler(
            settings.bundle_max_readings,
            settings.bundle_max_bytes,
            settings.bundle_linger_ms / 1000.0,
            self._publish_bundle,
            self.ioloop.call_later,
            settings.broker_max_message_bytes,
        )
        self._returned: set[int] = set()
        self._seq = 0
        self._acks = AckWatermark()
        self._connection_number = 0  # a nacked bundle's retry is for this connection only
        self._retrying = 0  # nacked bundles waiting to be published again
        metrics.RELAY_UNCONFIRMED.set_function(lambda: len(self._pending))
        metrics.RELAY_PARKED.set_function(lambda: self.registry.parked)
        metrics.RELAY_HELD.set_function(lambda: self._acks.outstanding)
        metrics.RELAY_REFUSED_HELD.set_function(lambda: len(self._held))
        metrics.RELAY_BUNDLED.set_function(lambda: self.bundler.held)
        # Children bound once: ``labels()`` costs ~2 us a call (every cause shown at 0).
        self._flushes = {cause: metrics.RELAY_BUNDLE_FLUSHES.labels(cause) for cause in CAUSES}
        self._accepted = ChildCache(metrics.RELAY_ACCEPTED)  # by tenant
        self._over_plan = ChildCache(metrics.RELAY_TENANT_RATE_LIMITED)  # by tenant
        self._unread = ChildCache(metrics.RELAY_REFUSED_UNREAD)  # by tenant, reason
        self._over_budget = ChildCache(metrics.RELAY_REJECTED_OVER_BUDGET)  # by tenant, reason
        self._paced = ChildCache(metrics.RELAY_REFUSED_PACED)  # by tenant
        # tenant -> (its plan rate, the refusal of a message over it): reused, not rebuilt.
        self._plan_refusals: dict[str, tuple[float, Rejection]] = {}
        metrics.RELAY_TENANT_QUEUES.set_function(self._consuming_tenants)
        metrics.RELAY_PREFETCH_BOUND.set_function(
            lambda: (
                settings.relay_prefetch
                + len(self._tenant_consumers) * settings.relay_tenant_prefetch
            )
        )
        self.every(settings.tenant_refresh_s, self._refresh_tenants)

    # -- set-up ------------------------------------------------------------------
    def consumers(self) -> list[Consumer]:
        return [self._ingest]

    def _confirm_mode(self, channel: Channel, then: Callable[[], None]) -> None:
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_broker_cancel)
        channel.confirm_delivery(self._on_confirm, callback=lambda _f: then())

    @property
    def _channel(self) -> Channel | None:
        return self._ingest.channel

    def _start_ingest(self) -> None:
        """Consume ``ingest``; once the broker confirms, open the tenant queues."""
        channel = self._ingest.channel
        assert channel is not None
        self._ingest.tag = channel.basic_consume(
            topology.INGEST, self._on_message, callback=lambda _f: self._channel_ready(channel)
        )
        self._queues[self._ingest.tag] = topology.INGEST

    def _channel_ready(self, channel: Channel) -> None:
        if channel is not self._channel:
            return
        self._ready = True
        self._queue_tenants(self._tenants)
        self._refresh_tenants()

    def on_connection_lost(self) -> None:
        # Every unacked delivery goes back to its queue; forget what was in flight.
        self._pending.clear()
        self._connection_number += 1
        self._retrying = 0
        self.bundler.discard()
        self._returned.clear()
        self._seq = 0
        self._acks.reset()
        self._held.clear()  # their timers find nothing and do nothing
        self._queues.clear()
        self._tenant_consumers.clear()
        self._to_open.clear()
        self._opening = None
        self._ready = False

    # -- tenant queues -------------------------------------------------------------
    def _refresh_tenants(self) -> None:
        """Look for new tenants off the I/O loop; they get a consumer on the relay's channel."""
        if self.stopping or not self._ready or self.db is None:
            return
        if self._redeclare:
            self._queue_tenants(self._redeclare)
            self._redeclare = set()
        if self._looking:
            return
        self._looking = True
        with_orphans = not self._orphans_listed
        future = self._lister.submit(self._list_tenants, with_orphans)
        future.add_done_callback(lambda f: self.call_soon(lambda: self._tenants_listed(f)))

    def _list_tenants(self, with_orphans: bool) -> tuple[set[str], bool]:
        changes = self.watch.poll()
        tenants = set()
        if changes is not None:
            metrics.RELAY_TENANT_READS.labels("full" if changes.full else "changes").inc()
            tenants = {t.id for t in changes.tenants}
            # Plans change on the I/O loop, which alone takes tokens.
            plans = [(t.id, t.max_rate, t.max_burst) for t in changes.tenants]
            self.call_soon(lambda: self._apply_plans(plans, changes.removed))
        if with_orphans:
            # Devices whose tenant record is gone are still bound to its ingest queue:
            # consume it so their messages are refused (``unknown_tenant``), not stranded.
            found = self.db[mongo.DEVICES].distinct("tenant")
            tenants.update(t for t in found if isinstance(t, str) and is_valid_id(t))
        return tenants, with_orphans

    def _apply_plans(
        self, plans: list[tuple[str, float | None, float | None]], removed: set[str]
    ) -> None:
        """Each listed tenant's accepted-reading rate (its record's, or the default)."""
        for tenant, rate, burst in plans:
            changed = self.tenant_rates.plan(tenant, rate, burst)
            if (
                changed  # not again at every full read of the tenants
                and burst is not None
                and burst < self.settings.max_batch_readings
                and self.tenant_rates.rate_of(tenant) > 0  # unlimited: the burst does nothing
            ):
                log.warning(
                    "a tenant's max_burst is below FAIRWAY_MAX_BATCH_READINGS: a full device"
                    " batch can never be accepted whole (its last readings are refused as"
                    " tenant_rate_limited)",
                    extra={
                        "tenant": tenant,
                        "burst": burst,
                        "batch": self.settings.max_batch_readings,
                    },
                )
        for tenant in removed:
            self.tenant_rates.forget(tenant)

    def _tenants_listed(self, future: Future[tuple[set[str], bool]]) -> None:
        self._looking = False
        try:
            tenants, with_orphans = future.result()
        except Exception as exc:  # database down: keep serving the tenants we know
            log.warning("tenant refresh failed", extra={"error": repr(exc)})
            return
        self._orphans_listed = self._orphans_listed or with_orphans
        self._tenants.update(tenants)
        self._queue_tenants(tenants)

    def _queue_tenants(self, tenants: set[str]) -> None:
        waiting = set(self._to_open)
        for tenant in sorted(tenants):
            if tenant not in self._tenant_consumers and tenant not in waiting:
                self._to_open.append(tenant)
        self._open_next()

    def _open_next(self) -> None:
        """Open one waiting tenant queue: declare, per-consumer qos, consume, then the next.

        One at a time: a consumer takes the ``basic.qos`` in force when it starts.
        """
        channel = self._channel
        if self._opening is not None or self.stopping or not self._ready or channel is None:
            return
        while self._to_open:
            tenant = self._to_open.popleft()
            if tenant in self._tenant_consumers:
                continue
            spec = topology.tenant_ingest_queue(tenant, self.settings)
            consumer = Consumer(spec.name, self.settings.relay_tenant_prefetch, self._on_message)

            def declare(ch: Channel, then: Callable[[], None], spec: Any = spec) -> None:
                ch.queue_declare(
                    spec.name, durable=True, arguments=spec.arguments(), callback=lambda _f: then()
                )

            def start(consumer: Consumer = consumer, tenant: str = tenant) -> None:
                ch = consumer.channel
                assert ch is not None
                consumer.tag = ch.basic_consume(
                    consumer.queue, self._on_message, callback=lambda _f: self._opened(ch, tenant)
                )
                self._queues[consumer.tag] = consumer.queue

            consumer.prepare, consumer.start = declare, start
            self._opening = tenant
            self._tenant_consumers[tenant] = consumer
            self.consume_on(channel, consumer)
            return

    def _opened(self, channel: Channel, tenant: str) -> None:
        if channel is self._channel and self._opening == tenant:
            self._opening = None
            self._open_next()

    def _on_broker_cancel(self, frame: Any) -> None:
        """The broker cancelled a consumer: its queue was deleted."""
        tag = frame.method.consumer_tag
        if tag == self._ingest.tag:
            self.reconnect_on_channel_close(self._channel, RuntimeError("ingest was deleted"))
            return
        for tenant, consumer in list(self._tenant_consumers.items()):
            if consumer.tag == tag:
                # Its bindings went with it: its devices' messages reach ``ingest`` through
                # the alternate exchange. Declared again at the next refresh (no bindings
                # until ``fairway declare``).
                consumer.tag = None
                del self._tenant_consumers[tenant]
                self._queues.pop(tag, None)
                self._redeclare.add(tenant)
                log.warning("tenant ingest queue deleted", extra={"tenant": tenant})

    def _consuming_tenants(self) -> int:
        return sum(1 for c in self._tenant_consumers.values() if c.tag is not None)

    # -- the hot path --------------------------------------------------------------
    def _on_message(
        self, channel: Channel, method: Basic.Deliver, props: BasicProperties, body: bytes
    ) -> None:
        tag, routing_key = method.delivery_tag, method.routing_key
        if not isinstance(routing_key, str):  # pika hands over a key that is not UTF-8 as bytes
            routing_key = bytes(routing_key).decode("utf-8", "replace")  # refused below
        queue = self._queues.get(method.consumer_tag or "", "")
        self._acks.track(tag)
        now = time.time()
        tenant = _tenant_of(queue)
        known: Device | _Missing | None = MISSING
        # Only a limited tenant's queue has a plan's gate and waits for its device's
        # answer before the body is read. An unlimited tenant's (the default) has no
        # bucket to close (TenantRates keeps none at rate 0): two calls saved per delivery.
        if tenant is not None and self.tenant_rates.rate_of(tenant) > 0:
            if self._refused_unread(tag, routing_key, body, props.user_id, queue, now):
                return
            found = self._known_or_parked(channel, tag, routing_key, body, props, queue, now)
            if isinstance(found, _Parked):
                return
            known = found
        self._read(
            channel, tag, routing_key, body, props.message_id, props.user_id, queue, now, known
        )

    def _known_or_parked(
        self,
        channel: Channel,
        tag: int,
        routing_key: str,
        body: bytes,
        props: BasicProperties,
        queue: str,
        now: float,
    ) -> Device | _Missing | _Parked | None:
        """What a delivery from a limited tenant's queue needs before it is read: its
        device's cached registry answer or, when the cache has none, :data:`PARKED`: it
        waits unread for the answer, then meets the plan's gate (:meth:`_released`) as a
        cached device's delivery does on arrival. (Read before the answer, it would take
        its tokens only then, so a flood's first look-up would be read whole.)
        :data:`MISSING` for a delivery refused for who sent it: read first, then looked
        up, as every delivery of the shared queue and of an unlimited tenant is
        (:meth:`_on_message` asks only for a limited tenant's).
        """
        try:
            sender, _stream = check_sender(
                routing_key, len(body), self.settings.max_message_bytes, props.user_id
            )
        except Rejection:
            return MISSING  # parse_message refuses it for who sent it
        known = self.registry.cached(sender)
        if known is MISSING:
            message_id, user_id = props.message_id, props.user_id
            self.registry.wait(
                sender,
                lambda found: self._released(
                    channel, tag, routing_key, body, message_id, user_id, queue, now, found
                ),
            )
            return PARKED
        return known

    def _released(
        self,
        channel: Channel,
        tag: int,
        routing_key: str,
        body: bytes,
        message_id: str | None,
        user_id: str | None,
        queue: str,
        received: float,
        device: Device | None,
    ) -> None:
        """A delivery parked unread is released with its registry answer: the plan's gate
        at its arrival time (the tokens taken meanwhile count), then read and admitted."""
        if channel is not self._channel:
            return  # the delivery belonged to a closed channel; the broker redelivers it
        if self._refused_unread(tag, routing_key, body, user_id, queue, received):
            return
        self._read(channel, tag, routing_key, body, message_id, user_id, queue, received, device)

    def _read(
        self,
        channel: Channel,
        tag: int,
        routing_key: str,
        body: bytes,
        message_id: str | None,
        user_id: str | None,
        queue: str,
        now: float,
        known: Device | _Missing | None,
    ) -> None:
        """Read the body (the contract), then admit it with its device: ``known``, or the
        registry's answer (parked until the database answers if not cached)."""
        try:
            message = parse_message(
                routing_key,
                body,
                self.settings,
                message_id=message_id,
                user_id=user_id,
                now=now,
            )
        except Rejection as refusal:
            self._refuse(
                Delivery(tag, 1, queue, len(body)),
                routing_key,
                body,
                refusal,
                _device_of(routing_key),
                _tenant_of(queue),
            )
            return
        except Exception as exc:
            # A validator bug must not become a poison message that crash-loops relays.
            log.exception("validation failed unexpectedly", extra={"routing_key": routing_key})
            bug = Rejection(Reason.SCHEMA, f"message could not be validated ({exc!r})")
            self._refuse(
                Delivery(tag, 1, queue, len(body)),
                routing_key,
                body,
                bug,
                _device_of(routing_key),
                _tenant_of(queue),
            )
            return
        if message.batch:
            metrics.RELAY_BATCH_READINGS.observe(message.count)
        delivery = Delivery(tag, 1, queue, len(body))
        device = self.registry.cached(message.device) if known is MISSING else known
        if device is MISSING:  # parked until the database answers (no closure when cached)
            self.registry.lookup(
                message.device,
                lambda found: self._admit(
                    channel, delivery, routing_key, body, message, found, now
                ),
            )
        else:
            self._admit(channel, delivery, routing_key, body, message, device, now)  # type: ignore[arg-type]

    def _refused_unread(
        self,
        tag: int,
        routing_key: str,
        body: bytes,
        user_id: str | None,
        queue: str,
        now: float,
    ) -> bool:
        """Refuse a delivery whole as ``tenant_rate_limited``, before its body is read, if
        its tenant's plan bucket is closed (:meth:`~ingest.ratelimit.TenantRates.gate_closed`:
        no whole token, or dry and below its opening level). Whether it did.

        Only who sent it is checked first (:func:`check_sender`, whose refusals then come
        from :func:`parse_message`); the body's and the registry's verdicts come after.
        The device's own bucket has no such gate: its messages are read and its excess
        refused by index, so it counts towards quarantine reading by reading. The
        refusal counts as one reading (its readings are unknown unread).
        """
        tenant = _tenant_of(queue)
        if tenant is None or not self.tenant_rates.gate_closed(tenant, now):
            return False
        try:
            limit = self.settings.max_message_bytes
            device, _stream = check_sender(routing_key, len(body), limit, user_id)
        except Rejection:
            return False  # refused by parse_message for who sent it, not for the plan
        refusal = self._over_plan_refusal(tenant)
        self._count_over_plan(tenant, 1)
        self._count_unread(tenant, refusal.reason)
        self._refuse(Delivery(tag, 1, queue, len(body)), routing_key, body, refusal, device, tenant)
        return True

    def _count_unread(self, tenant: str | None, reason: Reason) -> None:
        self._unread(tenant or "", reason.value).inc()

    def _admit(
        self,
        channel: Channel,
        delivery: Delivery,
        routing_key: str,
        body: bytes,
        message: Message,
        device: Device | None,
        received: float,
    ) -> None:
        if channel is not self._channel:
            return  # the delivery belonged to a closed channel; the broker redelivers it
        readings, refused = message.readings, message.refused
        over_plan = 0  # readings the device's rate allowed and its tenant's did not
        try:
            tenant = _check_device(message.device, device)
            granted = self.rate.take(message.device, received, len(readings)) if readings else 0
            if granted:
                # The tenant's plan after the device's own rate, so one device's excess
                # does not spend its tenant-mates' tokens.
                allowed = self.tenant_rates.take(tenant, received, granted)
                if allowed < granted:
                    over_plan = granted - allowed
                    self.rate.give_back(message.device, over_plan)
                    self._count_over_plan(tenant, over_plan)
                    granted = allowed
            if readings and not granted and not message.batch:
                if over_plan:
                    raise Rejection(Reason.TENANT_RATE_LIMITED, self._plan_limit(tenant))
                raise Rejection(
                    Reason.RATE_LIMITED,
                    f"device {message.device!r} exceeds {self.settings.device_rate:g} readings/s",
                )
        except Rejection as refusal:
            # The whole message: it costs its readings' worth of the refusal budgets.
            tenant_id = device.tenant if device is not None else None
            self._refuse(
                delivery,
                routing_key,
                body,
                refusal,
                message.device,
                tenant_id,
                readings=message.count,
            )
            return
        over_rate = readings[granted:]
        if over_rate:
            readings = readings[:granted]
        delivery.remaining = len(readings) + len(refused) + len(over_rate)
        batch = message.batch
        if batch and len(readings) > 1:
            self._bundle_batch(delivery, routing_key, message, tenant, readings, received)
        else:
            add, sender = self.bundler.add, message.device
            for index, reading in readings:  # at most one (a single, or a batch's only one)
                # If the tenant queue refuses its bundle, `rejected` keeps a single
                # reading's original body, a batch's reading as a tenant message (built
                # only then).
                item = Item(
                    delivery,
                    routing_key,
                    sender,
                    reading,
                    received,
                    None if batch else body,
                    index if batch else None,
                )
                add(tenant, bundle_part(reading, received), item)
        for bad in refused:
            self._refuse(
                delivery,
                routing_key,
                orjson.dumps(bad.element),
                bad.rejection,
                message.device,
                tenant,
                index=bad.index,
            )
        if over_rate:
            self._refuse_over_rate(delivery, routing_key, message, tenant, over_rate, over_plan)

    def _bundle_batch(
        self,
        delivery: Delivery,
        routing_key: str,
        message: Message,
        tenant: str,
        readings: list[tuple[int, Reading]],
        received: float,
    ) -> None:
        """Add a device batch's accepted readings to its tenant's bundles together: one
        bundle, so the scheduler's sink gets them in one message (one stored document)."""
        sender = message.device
        parts: list[bytes] = []
        items: list[Item] = []
        for index, reading in readings:
            # Refused by its tenant queue, a batch's reading goes to `rejected` as a
            # tenant message with its index (built only then).
            items.append(Item(delivery, routing_key, sender, reading, received, None, index))
            parts.append(bundle_part(reading, received))
        if self.bundler.add_batch(tenant, parts, items) > 1:
            metrics.RELAY_BATCHES_SPLIT.labels(tenant).inc()
            log.warning(
                "a device batch's readings exceed FAIRWAY_BROKER_MAX_MESSAGE_BYTES in one"
                " bundle: split across bundles",
                extra={"tenant": tenant, "device": sender, "readings": len(parts)},
            )

    def _refuse_over_rate(
        self,
        delivery: Delivery,
        routing_key: str,
        message: Message,
        tenant: str,
        over_rate: list[tuple[int, Reading]],
        over_plan: int,
    ) -> None:
        """Refuse a batch's readings beyond the rates, by index: the first ``over_plan``
        ``tenant_rate_limited``, the rest ``rate_limited``. Within the refusal budgets each
        is published as :meth:`_refuse` does; beyond, they are counted in one step and
        settle the delivery together (a flood past a plan refuses most of its readings,
        and building each refusal only to drop it cost the relay ~15 us a reading)."""
        device, now = message.device, time.monotonic()
        for reason, group in (
            (Reason.TENANT_RATE_LIMITED, over_rate[:over_plan]),
            (Reason.RATE_LIMITED, over_rate[over_plan:]),
        ):
            if not group:
                continue
            kept, beyond_device = self.refusals.take(device, tenant, now, len(group))
            if kept:
                limit = (
                    self._plan_limit(tenant)
                    if reason is Reason.TENANT_RATE_LIMITED
                    else f"device {device!r} exceeds {self.settings.device_rate:g} readings/s"
                )
                for i, reading in group[:kept]:
                    refusal = Rejection(reason, f"reading {i} of {message.count}: {limit}")
                    body = orjson.dumps(_element(reading))
                    self._publish_refusal(
                        delivery, routing_key, body, refusal, device, tenant, index=i
                    )
            dropped = len(group) - kept
            if dropped:
                self._count_over_budget(tenant, reason, dropped)
                if beyond_device:
                    self.quarantiner.refused_over_budget(device, reason, beyond_device)
                delivery.remaining -= dropped - 1  # settled together: one paced settle
                self._paced_done(delivery, tenant)

    def _count_over_budget(self, tenant: str | None, reason: Reason, count: int) -> None:
        self._over_budget(tenant or "", reason.value).inc(count)

    def _over_plan_refusal(self, tenant: str) -> Rejection:
        """The refusal of a message over ``tenant``'s plan (one per plan rate, reused)."""
        rate = self.tenant_rates.rate_of(tenant)
        kept = self._plan_refusals.get(tenant)
        if kept is None or kept[0] != rate:
            refusal = Rejection(Reason.TENANT_RATE_LIMITED, self._plan_limit(tenant))
            kept = self._plan_refusals[tenant] = (rate, refusal)
        return kept[1]

    def _plan_limit(self, tenant: str) -> str:
        rate = self.tenant_rates.rate_of(tenant)
        return f"tenant {tenant!r} exceeds its {rate:g} readings/s"

    def _count_over_plan(self, tenant: str, readings: int) -> None:
        self._over_plan(tenant).inc(readings)

    def _refuse(
        self,
        delivery: Delivery,
        routing_key: str,
        body: bytes,
        refusal: Rejection,
        device: str | None,
        tenant: str | None = None,
        *,
        index: int | None = None,
        readings: int = 1,
    ) -> None:
        """Publish one refusal to ``rejected`` (within the refusal budgets) for ``delivery``.

        ``readings``: how many readings it refuses (a whole batch refused by the
        registry costs the budgets that many); ``index``: one reading of a batch.
        """
        spent = self.refusals.spent(device, tenant, time.monotonic(), readings)
        if spent is not None:
            # Over the device's or tenant's budget: counted, acked, not kept.
            self._count_over_budget(tenant, refusal.reason, 1)
            if spent == DEVICE_SPENT:
                # Only the device's own excess counts towards its quarantine: a device
                # within its budget is never quarantined for what its tenant-mates sent.
                # A whole message costs the watch what it costs the pace (by its KiB if
                # more than its readings); one reading of a batch costs one.
                units = (
                    readings
                    if index is not None
                    else max(readings, 1 + delivery.size // PACE_BYTES)
                )
                self.quarantiner.refused_over_budget(device, refusal.reason, units)
            self._paced_done(delivery, tenant)
            return
        self._publish_refusal(delivery, routing_key, body, refusal, device, tenant, index=index)

    def _publish_refusal(
        self,
        delivery: Delivery,
        routing_key: str,
        body: bytes,
        refusal: Rejection,
        device: str | None,
        tenant: str | None,
        *,
        index: int | None = None,
    ) -> None:
        """Publish one refusal to ``rejected`` (the budgets allowed it) for ``delivery``."""
        headers: dict[str, Any] = {
            topology.REASON_HEADER: refusal.reason.value,
            topology.DETAIL_HEADER: refusal.detail,
            topology.ROUTING_KEY_HEADER: routing_key[:255],
        }
        if device:
            headers[topology.DEVICE_HEADER] = device
        if tenant:
            headers[topology.TENANT_HEADER] = tenant
        if index is not None:
            headers[topology.INDEX_HEADER] = index
        if len(body) > self.settings.max_message_bytes:
            headers[topology.SIZE_HEADER] = len(body)
            body = body[: self.settings.rejected_body_bytes]
        self._publish(
            topology.REJECTED,
            f"{refusal.reason.value}.{device or '_'}",
            body,
            Pending(delivery, routing_key, body, device, tenant, refusal.reason, index),
            headers=headers,
        )

    def _paced_done(self, delivery: Delivery, tenant: str | None) -> None:
        """Settle a refusal over budget, holding the delivery's ack back to the pace.

        Only the publish that completes the delivery is paced; a delivery costs one
        unit plus one per KiB of its body, however many of its readings are refused. A
        held delivery keeps its place in its queue's prefetch window, so a queue refused
        faster than ``relay_refused_pace`` fills its window and the broker stops
        delivering it: the relay spends at most that pace on it, the broker keeps the
        rest in the queue (up to its bounds, then ``reject-publish``).
        """
        if delivery.remaining > 1:
            self._done(delivery)
            return
        cost = 1 + delivery.size // PACE_BYTES
        wait = self.pace.delay(delivery.queue, time.monotonic(), cost)
        if wait <= 0.0:
            self._done(delivery)
            return
        self._paced(tenant or "").inc()
        self._held[delivery.tag] = delivery
        self._settle([])  # deliveries settled behind it are acked one by one from now
        self.ioloop.call_later(wait, lambda: self._release_held(delivery))

    def _release_held(self, delivery: Delivery) -> None:
        """Ack a held refusal (its time came, or the relay is stopping)."""
        if self._held.get(delivery.tag) is not delivery:
            return  # released already, or the connection was lost: the broker redelivers it
        del self._held[delivery.tag]
        self._done(delivery)

    def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        pending: Pending | BundlePending,
        headers: dict[str, Any] | None = None,
    ) -> None:
        channel = self._channel
        if channel is None or not channel.is_open:
            return  # connection lost: the original is unacked and will be redelivered
        self._seq += 1
        self._pending[self._seq] = pending
        channel.basic_publish(
            exchange,
            routing_key,
            body,
            BasicProperties(
                delivery_mode=2,
                content_type="application/json",
                correlation_id=str(self._seq),
                headers=headers,
            ),
            mandatory=True,
        )

    def _publish_bundle(self, tenant: str, body: bytes, items: list[Item], cause: str) -> None:
        """Publish a flushed bundle to its tenant queue (the bundler's ``publish``)."""
        metrics.RELAY_BUNDLE_READINGS.observe(len(items))
        metrics.RELAY_BUNDLE_BYTES.observe(len(body))
        self._flushes[cause].inc()
        self._publish(
            topology.TENANTS,
            tenant,
            body,
            BundlePending(tenant, items, body),
            headers={topology.READINGS_HEADER: len(items)},
        )

    def _retry_bundle(self, bundle: BundlePending) -> None:
        """Publish a nacked bundle again after ``relay_nack_retry_s``, on this connection only.

        A nack does not say why: a full queue, or a quorum queue that could not reach its
        leader (a node just lost). Only a queue still refusing after the retries is full.
        """
        number = self._connection_number
        self._retrying += 1
        metrics.RELAY_NACK_RETRIES.labels(bundle.tenant).inc()

        def again() -> None:
            if number != self._connection_number:
                return  # connection lost meanwhile: the originals are redelivered
            self._retrying -= 1
            retried = BundlePending(bundle.tenant, bundle.items, bundle.body, bundle.attempts + 1)
            self._publish(
                topology.TENANTS,
                bundle.tenant,
                bundle.body,
                retried,
                headers={topology.READINGS_HEADER: len(bundle.items)},
            )

        self.ioloop.call_later(self.settings.relay_nack_retry_s, again)

    # -- confirms ----------------------------------------------------------------
    def _on_return(
        self, _channel: Channel, _method: Basic.Return, props: BasicProperties, _body: bytes
    ) -> None:
        # A return always precedes the confirm of the same publish.
        if props.correlation_id and props.correlation_id.isdigit():
            self._returned.add(int(props.correlation_id))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, Basic.Ack)
        last = method.delivery_tag
        pending = self._pending
        settled: list[int] = []
        if method.multiple:
            # Refusals re-published below get new, higher sequence numbers: the loop
            # ends before reaching them.
            while pending and next(iter(pending)) <= last:
                seq, item = pending.popitem(last=False)
                self._confirmed(seq, item, acked, settled)
        elif last in pending:
            self._confirmed(last, pending.pop(last), acked, settled)
        self._settle(settled)

    def _done(self, delivery: Delivery, settled: list[int] | None = None) -> None:
        """One publish of ``delivery`` is settled; the delivery is once none is left.

        ``settled`` collects completed tags for one :meth:`_settle` (None: settle now).
        """
        delivery.remaining -= 1
        if delivery.remaining > 0:
            return
        if settled is None:
            self._settle([delivery.tag])
        else:
            settled.append(delivery.tag)

    def _settle(self, tags: list[int]) -> None:
        """Ack whatever prefix of deliveries ``tags`` completes."""
        upto = self._acks.settle(tags)
        channel = self._channel
        if channel is None or not channel.is_open:
            return
        if upto is not None:
            channel.basic_ack(upto, multiple=True)
        if self._held and self._acks.head in self._held:
            # A refusal held by the pace must not hold back every later delivery's ack
            # (other tenants' queues would fill their prefetch windows and stall): ack
            # them one by one until it is released.
            for tag in self._acks.take_settled():
                channel.basic_ack(tag)

    def _confirmed(
        self, seq: int, item: Pending | BundlePending, acked: bool, settled: list[int]
    ) -> None:
        returned = seq in self._returned
        if returned:
            self._returned.discard(seq)
        if isinstance(item, BundlePending):
            self._bundle_confirmed(item, acked and not returned, returned, settled)
        elif acked and not returned:
            metrics.RELAY_REJECTED.labels(item.reason.value).inc()
            self._done(item.delivery, settled)
        else:
            metrics.RELAY_REJECTED_DROPPED.labels(item.reason.value).inc()
            log.error(
                "rejected queue refused a message; dropped after counting",
                extra={"reason": item.reason.value, "device": item.device},
            )
            self._done(item.delivery, settled)

    def _bundle_confirmed(
        self, bundle: BundlePending, taken: bool, returned: bool, settled: list[int]
    ) -> None:
        """Settle each reading of a bundle; refuse each on its own if the queue did not take it."""
        tenant = bundle.tenant
        if taken:
            self._accepted(tenant).inc(len(bundle.items))
            for item in bundle.items:  # _done, inlined: once per reading
                delivery = item.delivery
                delivery.remaining -= 1
                if delivery.remaining <= 0:
                    settled.append(delivery.tag)
            return
        if not returned and bundle.attempts < self.settings.relay_nack_retries:
            self._retry_bundle(bundle)
            return
        refusal = (
            Rejection(Reason.UNROUTABLE, f"tenant {tenant!r} has no queue")
            if returned
            else Rejection(Reason.TENANT_BACKLOG_FULL, f"tenant {tenant!r} backlog is full")
        )
        for item in bundle.items:
            kept = item.body
            if kept is None:
                kept = tenant_message(tenant, item.reading, item.received)
            # The refusal replaces the reading's place in the bundle in the delivery's count.
            self._refuse(
                item.delivery,
                item.routing_key,
                kept,
                refusal,
                item.device,
                tenant,
                index=item.index,
            )

    # -- stopping ----------------------------------------------------------------
    def drained(self) -> bool:
        self.bundler.flush_all("drain")  # stopping: open bundles go at once
        for delivery in list(self._held.values()):  # the pace no longer matters
            self._release_held(delivery)
        return (
            not self._pending and not self._retrying and not self._held and not self.registry.parked
        )

    def after_drain(self) -> None:
        self.registry.close()
        self._lister.shutdown(wait=False, cancel_futures=True)
        self.quarantiner.close()


def run(settings: Settings) -> None:
    """``fairway relay``: serve until SIGTERM, then drain."""
    Relay(settings, mongo.connect(settings)).serve(settings.metrics_port)


def _device_of(routing_key: str) -> str | None:
    device = routing_key.partition(".")[0]
    return device if is_valid_id(device) else None


@lru_cache(maxsize=4096)
def _tenant_of(queue: str) -> str | None:
    """The tenant whose ``ingest.<tenant>`` a delivery came from (None: shared ``ingest``).

    Only that tenant's device bindings route into its queue, so a message refused before
    the registry look-up (too large, broken JSON) is still charged to its tenant. Cached:
    asked for every delivery, of a few queue names (the answer holds no state)."""
    if queue.startswith(topology.INGEST_QUEUE_PREFIX):
        return queue[len(topology.INGEST_QUEUE_PREFIX) :]
    return None


def _element(reading: Any) -> dict[str, Any]:
    """A reading as a device sends it, for the body of its refusal."""
    return {"ts": reading.ts, "values": reading.values, "id": reading.message_id}


def _check_device(device_id: str, device: Device | None) -> str:
    """The device's tenant, or the registry's reason to refuse it."""
    if device is None:
        raise Rejection(Reason.UNKNOWN_DEVICE, f"device {device_id!r} is not registered")
    if not device.tenant_known:
        raise Rejection(Reason.UNKNOWN_TENANT, f"tenant {device.tenant!r} does not exist")
    if not device.enabled:
        raise Rejection(Reason.DEVICE_DISABLED, f"device {device_id!r} is disabled")
    return device.tenant
