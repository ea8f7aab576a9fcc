"""``fairway monitor``: device online status and alert rules, as events.

Two feeds, each handled in order on its own worker thread (the pika I/O loop never
waits for MongoDB or HTTP):

* **Status.** RabbitMQ's ``amq.rabbitmq.event`` exchange exists in one vhost only
  (``event_exchange.vhost``, default ``/``: ``FAIRWAY_EVENT_EXCHANGE_VHOST``), so the
  monitor opens a second connection there with an exclusive, bounded queue bound to
  ``connection.created`` and ``connection.closed``. A ``created`` event names the
  vhost and user: connections to other vhosts, and users that are not registered
  devices (Fairway's own services), are ignored. A ``closed`` event names only the
  connection, so open connections are tracked by (node, name) and counted per
  device: a device is online while it has at least one. Changes go to the device
  document (``online``, ``last_seen``) and out as ``status.<tenant>.<device>``.
  Events are lost while the monitor is down, so on every (re)connect, and every
  ``monitor_reconcile_s``, the open connections are read from the management API and
  reconciled (:class:`ConnectionTracker`); the API lags by a few seconds, hence a
  grace period before a connection it does not list is considered closed.
* **Alerts.** A durable queue ``monitor.telemetry`` (bounded; the oldest event goes
  first when full) bound to ``events`` ``telemetry.#``. Each event is evaluated
  against the tenant's enabled rules (:mod:`fairway.domain.alerts`, cached
  ``rules_cache_ttl_s``); each transition is saved in ``alert_state`` and then
  published as ``alert.<tenant>.<device>``; then the event is acked. A crash after
  the save and before the publish loses that alert event (the state is right, the
  push is missing); a crash before the save re-evaluates the redelivered event.

Events go out on a separate publishing connection (:class:`fairway.amqp.side.EventPublisher`),
transient and best-effort. Run one monitor per Fairway vhost: alert state is kept in
memory and written through, and two monitors would evaluate the same devices twice.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from cachetools import TTLCache
from pika.channel import Channel
from pika.spec import Basic, BasicProperties
from pymongo.database import Database

from fairway.amqp import management
from fairway.amqp.connection import Brokers
from fairway.amqp.service import AmqpService, Consumer
from fairway.amqp.side import EventPublisher, SideConnection
from fairway.domain import alerts
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage import mongo, registry, rules
from monitor.metrics import (
    ALERT_EVENTS,
    BACKLOG,
    DROPPED,
    EVALUATED,
    IGNORED,
    MALFORMED,
    ONLINE,
    PENDING,
    STATUS_EVENTS,
)

log = logging.getLogger(__name__)

EVENT_EXCHANGE = "amq.rabbitmq.event"
CREATED, CLOSED = "connection.created", "connection.closed"
TELEMETRY_QUEUE = "monitor.telemetry"
LISTING_GRACE_S = 30.0  # the management API lists a new connection within ~5 s
NODES_CHECK_S = 5.0  # how often the cluster's nodes are checked (one management API call)
RECENTLY_CLOSED_S = 120.0
MAX_RECENTLY_CLOSED = 100_000
REGISTRY_TTL_S = 60.0
BACKLOG_INTERVAL_S = 5.0


# -- connection tracking (pure) ----------------------------------------------------
@dataclass
class ConnectionTracker:
    """Open connections per device, from events and management-API snapshots."""

    conns: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    by_device: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    closed_at: dict[tuple[str, str], float] = field(default_factory=dict)

    def opened(self, key: tuple[str, str], device: str, now: float) -> bool:
        """Record an open connection; True if the device just came online."""
        if key in self.conns:
            return False
        self.conns[key] = (device, now)
        names = self.by_device.setdefault(device, set())
        names.add(key)
        return len(names) == 1

    def closed(self, key: tuple[str, str], now: float) -> str | None:
        """Record a closed connection; the device if it just went offline."""
        if len(self.closed_at) >= MAX_RECENTLY_CLOSED:
            self._forget_closed(now)
        self.closed_at[key] = now
        entry = self.conns.pop(key, None)
        if entry is None:
            return None
        device = entry[0]
        names = self.by_device.get(device, set())
        names.discard(key)
        if names:
            return None
        self.by_device.pop(device, None)
        return device

    def reconcile(
        self, listed: dict[tuple[str, str], str], now: float, grace_s: float = LISTING_GRACE_S
    ) -> tuple[set[str], set[str]]:
        """Apply a snapshot of open device connections; (came online, went offline).

        A listed connection closed recently is stale in the listing; one we know that
        the listing lacks is closed only once it is older than ``grace_s``.
        """
        self._forget_closed(now)
        online, offline = set(), set()
        for key, device in listed.items():
            if key not in self.closed_at and self.opened(key, device, now):
                online.add(device)
        for key, (_device, since) in list(self.conns.items()):
            if key not in listed and now - since >= grace_s:
                gone = self.closed(key, now)
                if gone is not None:
                    offline.add(gone)
        return online - offline, offline - online

    def _forget_closed(self, now: float) -> None:
        # Closed events name no vhost: every vhost's closures pass through here.
        fresh = {k: t for k, t in self.closed_at.items() if now - t < RECENTLY_CLOSED_S}
        if len(fresh) >= MAX_RECENTLY_CLOSED:  # a storm of closures: keep the newest half
            fresh = dict(sorted(fresh.items(), key=lambda kv: kv[1])[MAX_RECENTLY_CLOSED // 2 :])
        self.closed_at = fresh

    def nodes_down(self, nodes: set[str], now: float) -> set[str]:
        """Close every connection on ``nodes`` (cluster nodes that stopped running: they
        sent no ``connection.closed``); the devices that went offline."""
        offline = set()
        for key in [k for k in self.conns if k[0] in nodes]:
            gone = self.closed(key, now)
            if gone is not None:
                offline.add(gone)
        return offline

    @property
    def online(self) -> set[str]:
        """Devices with at least one open connection."""
        return set(self.by_device)


def device_of(user: str, vhost: str) -> str:
    """The device id of a connection's user (MQTT may log in as ``<vhost>:<device>``)."""
    prefix = vhost + ":"
    return user[len(prefix) :] if user.startswith(prefix) else user


def _header(headers: dict[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _event_time(headers: dict[str, Any]) -> datetime:
    ms = headers.get("timestamp_in_ms")
    if isinstance(ms, int):
        return datetime.fromtimestamp(ms / 1000.0, UTC)
    return datetime.now(UTC)


def status_event(tenant: str, device: str, online: bool, at: datetime) -> dict[str, Any]:
    """The ``status.<tenant>.<device>`` body."""
    return {
        "kind": "status",
        "tenant": tenant,
        "device": device,
        "online": online,
        "at": at.isoformat(timespec="milliseconds"),
    }


# -- the process ----------------------------------------------------------------
class Monitor(AmqpService):
    """Consume connection events and telemetry events; publish status and alerts."""

    name = "fairway-monitor"

    def __init__(self, settings: Settings, db: Database) -> None:
        super().__init__(settings)
        self.db = db
        self.vhost = settings.vhost
        self.tracker = ConnectionTracker()
        self.rules = alerts.RuleCache(db, settings.rules_cache_ttl_s)
        self.engine: alerts.AlertEngine | None = None  # loaded on the alerts thread
        self._registry: TTLCache[str, str | None] = TTLCache(
            settings.device_cache_size, REGISTRY_TTL_S
        )
        self._status_pool = ThreadPoolExecutor(1, thread_name_prefix="status")
        self._alerts_pool = ThreadPoolExecutor(1, thread_name_prefix="alerts")
        self._pending = {"status": 0, "alerts": 0}
        for feed in self._pending:
            PENDING.labels(feed).set_function(partial(self._pending.__getitem__, feed))
        ONLINE.set_function(lambda: len(self.tracker.by_device))
        self._first_snapshot = True
        self._telemetry = Consumer(
            TELEMETRY_QUEUE,
            settings.monitor_prefetch,
            self._on_telemetry,
            prepare=self._declare_telemetry,
        )
        self.publisher = EventPublisher(Brokers(settings, f"{self.name}-events"), self.ioloop)
        self.add_side_connection(self.publisher)
        status = Brokers(settings, f"{self.name}-status", vhost=settings.event_exchange_vhost)
        self.feed = SideConnection(status, self.ioloop, self._on_feed_channel)
        self.add_side_connection(self.feed)
        # The status feed's queue is server-named: ``prepare`` fills it in.
        self._feed = Consumer(
            "", settings.monitor_prefetch, self._on_connection_event, prepare=self._declare_feed
        )
        self.every(settings.monitor_reconcile_s, self._reconcile_soon)
        self.every(NODES_CHECK_S, self._check_nodes_soon)
        self.every(BACKLOG_INTERVAL_S, self._tick_backlog, first=1.0)

    # -- set-up ------------------------------------------------------------------
    def consumers(self) -> list[Consumer]:
        return [self._telemetry]

    def _declare_telemetry(self, channel: Channel, then: Callable[[], None]) -> None:
        args = topology.queue_arguments(
            self.settings.monitor_queue_max_length, "drop-head", self.settings.queue_type
        )

        def declared(_frame: Any) -> None:
            channel.queue_bind(
                TELEMETRY_QUEUE, topology.EVENTS, "telemetry.#", callback=lambda _f: then()
            )

        channel.queue_declare(TELEMETRY_QUEUE, durable=True, arguments=args, callback=declared)

    def _on_feed_channel(self, channel: Channel) -> None:
        """A (new) channel in the event exchange's vhost: queue, bind, snapshot, consume."""
        self.consume_on(channel, self._feed)

    def _declare_feed(self, channel: Channel, then: Callable[[], None]) -> None:
        # Exclusive queues cannot be quorum queues: the broker's default type.
        args = topology.queue_arguments(self.settings.monitor_queue_max_length, "drop-head")

        def declared(frame: Any) -> None:
            queue = self._feed.queue = frame.method.queue
            channel.queue_bind(
                queue,
                EVENT_EXCHANGE,
                CREATED,
                callback=lambda _f: channel.queue_bind(
                    queue, EVENT_EXCHANGE, CLOSED, callback=lambda _f: bound()
                ),
            )

        def bound() -> None:
            # Events queue up from here on; the snapshot is taken after this point and
            # handled first on the (single, ordered) status thread.
            self._submit("status", self._reconcile, channel, None)
            then()

        channel.queue_declare(
            "", exclusive=True, auto_delete=True, arguments=args, callback=declared
        )

    # -- dispatching to the worker threads -----------------------------------------
    def _submit(
        self,
        feed: str,
        work: Callable[[], Any] | Callable[..., Any],
        channel: Channel | None,
        tag: int | None,
        *args: Any,
    ) -> None:
        pool = self._status_pool if feed == "status" else self._alerts_pool
        self._pending[feed] += 1
        future = pool.submit(work, *args)
        future.add_done_callback(
            lambda f: self.call_soon(lambda: self._done(feed, f, channel, tag))
        )

    def _done(self, feed: str, future: Future, channel: Channel | None, tag: int | None) -> None:
        self._pending[feed] -= 1
        try:
            events = future.result()
        except Exception as exc:  # only once the drain is over (see retrying); never ack then
            log.warning("handling failed", extra={"feed": feed, "error": repr(exc)})
            return
        for routing_key, event in events or ():
            if self.publisher.publish(routing_key, event):
                if event["kind"] == "status":
                    STATUS_EVENTS.labels(str(event["online"]).lower()).inc()
                else:
                    ALERT_EVENTS.labels(event["state"]).inc()
            else:
                DROPPED.inc()
        if tag is not None and channel is not None and channel.is_open:
            # One ordered worker per feed: every earlier delivery is already handled.
            channel.basic_ack(tag, multiple=True)

    # -- status feed (status thread) -------------------------------------------------
    def _on_connection_event(
        self, channel: Channel, method: Basic.Deliver, props: BasicProperties, _body: bytes
    ) -> None:
        headers = props.headers or {}
        self._submit(
            "status",
            self._connection_event,
            channel,
            method.delivery_tag,
            method.routing_key,
            headers,
        )

    def _connection_event(
        self, kind: str, headers: dict[str, Any]
    ) -> list[tuple[str, dict[str, Any]]]:
        key = (_header(headers, "node") or "", _header(headers, "name") or "")
        at = _event_time(headers)
        now = time.monotonic()
        if kind == CREATED:
            if _header(headers, "vhost") != self.vhost:
                return []
            device = device_of(_header(headers, "user") or "", self.vhost)
            tenant = self._tenant_of(device)
            if tenant is None:
                IGNORED.inc()
                return []
            came_online = self.tracker.opened(key, device, now)
            return self._status_changed(device, tenant, True, at, only_seen=not came_online)
        if kind == CLOSED:
            went = self.tracker.closed(key, now)
            if went is None:
                return []
            tenant = self._tenant_of(went)
            return self._status_changed(went, tenant, False, at) if tenant else []
        return []

    def _status_changed(
        self, device: str, tenant: str, online: bool, at: datetime, only_seen: bool = False
    ) -> list[tuple[str, dict[str, Any]]]:
        change = {"last_seen": at} if only_seen else {"online": online, "last_seen": at}
        self.retrying(
            "device status update",
            lambda: self.db[mongo.DEVICES].update_one({"_id": device}, {"$set": change}),
        )
        if only_seen:
            return []
        return [(f"status.{tenant}.{device}", status_event(tenant, device, online, at))]

    def _tenant_of(self, device: str) -> str | None:
        """The device's tenant, None if it is not a registered device (cached)."""
        if not device:
            return None
        if device in self._registry:
            return self._registry[device]
        found = self.retrying(
            "device lookup", lambda: registry.find_devices(self.db, [device])
        ).get(device)
        tenant = found.tenant if found is not None else None
        self._registry[device] = tenant
        return tenant

    def _reconcile_soon(self) -> None:
        if self.feed.ready:
            self._submit("status", self._reconcile, None, None)

    def _check_nodes_soon(self) -> None:
        if self.feed.ready and not self._pending["status"]:
            self._submit("status", self._check_nodes, None, None)

    def _down_nodes(self) -> set[str]:
        """Cluster nodes the management API lists as not running (status thread)."""
        nodes = management.call(
            self.settings.rabbitmq_mgmt_url, "GET", "nodes?columns=name,running"
        )
        return {n["name"] for n in nodes or [] if not n.get("running", True)}

    def _check_nodes(self) -> list[tuple[str, dict[str, Any]]]:
        """A node that died took its connections without ``connection.closed`` events:
        its devices go offline now, not at the next reconcile (status thread)."""
        try:
            down = self._down_nodes()
        except Exception as exc:
            log.warning("management API unavailable; nodes not checked", extra={"error": repr(exc)})
            return []
        offline = self.tracker.nodes_down(down, time.monotonic())
        if offline:
            log.info("devices offline with their node", extra={"nodes": sorted(down)})
        now = datetime.now(UTC)
        out: list[tuple[str, dict[str, Any]]] = []
        for device in offline:
            tenant = self._tenant_of(device)
            if tenant is not None:
                out += self._status_changed(device, tenant, False, now)
        return out

    def _reconcile(self) -> list[tuple[str, dict[str, Any]]]:
        """Compare with the management API's open connections (status thread)."""
        try:
            listing = management.call(
                self.settings.rabbitmq_mgmt_url,
                "GET",
                f"vhosts/{urllib.parse.quote(self.vhost, safe='')}/connections"
                "?columns=name,node,user",
            )
        except Exception as exc:
            log.warning(
                "management API unavailable; status not reconciled", extra={"error": repr(exc)}
            )
            return []
        listed: dict[tuple[str, str], str] = {}
        for conn in listing or []:
            device = device_of(conn.get("user") or "", self.vhost)
            if self._tenant_of(device) is not None:
                listed[(conn.get("node") or "", conn.get("name") or "")] = device
        online, offline = self.tracker.reconcile(listed, time.monotonic())
        if self._first_snapshot:
            # Devices the database still shows online from before this process.
            self._first_snapshot = False
            stale = self.retrying(
                "device status read",
                lambda: [
                    d["_id"] for d in self.db[mongo.DEVICES].find({"online": True}, {"_id": 1})
                ],
            )
            offline |= set(stale) - self.tracker.online
        now = datetime.now(UTC)
        out: list[tuple[str, dict[str, Any]]] = []
        for device, is_online in [(d, True) for d in online] + [(d, False) for d in offline]:
            tenant = self._tenant_of(device)
            if tenant is not None:
                out += self._status_changed(device, tenant, is_online, now)
        return out

    # -- alerts feed (alerts thread) ---------------------------------------------------
    def _on_telemetry(
        self, channel: Channel, method: Basic.Deliver, _props: BasicProperties, body: bytes
    ) -> None:
        self._submit("alerts", self._evaluate, channel, method.delivery_tag, body)

    def _evaluate(self, body: bytes) -> list[tuple[str, dict[str, Any]]]:
        if self.engine is None:
            self.engine = alerts.AlertEngine(
                self.retrying("alert state read", lambda: rules.load_firing(self.db))
            )
        try:
            event = orjson.loads(body)
            tenant, device = event["tenant"], event["device"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            MALFORMED.inc()
            log.warning("ignoring a malformed telemetry event", extra={"body": body[:200]})
            return []
        EVALUATED.inc()
        try:
            fired = self.engine.on_event(self.rules.rules(tenant), event)
        except (KeyError, TypeError, ValueError) as exc:
            # Valid JSON of the wrong shape (not from a scheduler): skip it, counted,
            # and let the next delivery's multiple ack cover it.
            MALFORMED.inc()
            log.warning("ignoring a malformed telemetry event", extra={"error": repr(exc)})
            return []
        for alert in fired:
            self.retrying("alert state write", partial(rules.save_state, self.db, alert))
        return [(alerts.alert_key(tenant, device), alert) for alert in fired]

    # -- gauges and stopping -----------------------------------------------------------
    def _tick_backlog(self) -> None:
        channel = self._telemetry.channel
        if channel is not None and channel.is_open:
            channel.queue_declare(
                TELEMETRY_QUEUE,
                passive=True,
                callback=lambda f: BACKLOG.set(f.method.message_count),
            )

    def drained(self) -> bool:
        return not any(self._pending.values())

    def after_drain(self) -> None:
        self._status_pool.shutdown(wait=False, cancel_futures=True)
        self._alerts_pool.shutdown(wait=False, cancel_futures=True)


def run(settings: Settings) -> None:
    """``fairway monitor``: serve until SIGTERM, then drain."""
    db = mongo.connect(settings)
    mongo.ensure_indexes(db)
    Monitor(settings, db).serve(settings.metrics_port)
