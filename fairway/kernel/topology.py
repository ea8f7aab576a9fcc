"""The AMQP topology: every exchange, queue and argument, declared in one place.

Names are part of the contract (see docs/architecture.md). Declarations are
idempotent; every process runs :func:`declare` on start and after each reconnect,
over a short-lived blocking channel, before its asynchronous consumer opens.

Bounded queues use ``reject-publish`` overflow: a publisher with confirms gets a
``basic.nack`` when a queue is full, so the relay can refuse the message with a
reason (``tenant_backlog_full``) instead of the broker dropping it silently.

Devices' messages enter per tenant: each registered device has one binding
``telemetry`` -> ``ingest.<tenant>`` with key ``<device>.*`` (ids hold no dot, a stream
is one word), made when it is registered (:func:`bind_device`). Whatever matches no
device binding (unknown devices, malformed keys, devices registered before their
binding) goes to ``telemetry``'s alternate exchange ``telemetry.unrouted`` and from it to
the shared ``ingest``, where the relay refuses it with its reason as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fairway.kernel.settings import Settings

TELEMETRY = "telemetry"
INGEST = "ingest"
UNROUTED = "telemetry.unrouted"  # telemetry's alternate exchange, feeding ``ingest``
INGEST_QUEUE_PREFIX = "ingest."
TENANTS = "tenants"
REJECTED = "rejected"
EVENTS = "events"
TENANT_QUEUE_PREFIX = "tenant."

# Header names on messages in ``rejected``.
REASON_HEADER = "x-fairway-reason"
DETAIL_HEADER = "x-fairway-detail"
DEVICE_HEADER = "x-fairway-device"
TENANT_HEADER = "x-fairway-tenant"
ROUTING_KEY_HEADER = "x-fairway-routing-key"
SIZE_HEADER = "x-fairway-original-size"
INDEX_HEADER = "x-fairway-index"  # a refused reading's position in its device batch
# On a bundle in a tenant queue: how many readings it carries (what the scheduler's DRR
# charges it). Absent: one reading (a message in the format before bundles).
READINGS_HEADER = "x-fairway-readings"


class Channel(Protocol):
    """The part of ``pika.adapters.blocking_connection.BlockingChannel`` used here."""

    def exchange_declare(self, exchange: str, exchange_type: str = ..., **kw: Any) -> Any: ...
    def queue_declare(self, queue: str, **kw: Any) -> Any: ...
    def queue_bind(self, queue: str, exchange: str, routing_key: str | None = ...) -> Any: ...
    def queue_unbind(
        self, queue: str, exchange: str = ..., routing_key: str | None = ...
    ) -> Any: ...


def queue_arguments(
    max_length: int,
    overflow: str = "reject-publish",
    queue_type: str | None = None,
    extra: dict[str, Any] | None = None,
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """The ``x-`` arguments of a bounded queue; every Fairway queue is declared with these.

    ``overflow`` is ``reject-publish`` (publishers are told) or ``drop-head`` (live
    feeds keep the newest); ``queue_type`` None leaves the broker's default (classic),
    as exclusive queues require. ``max_bytes`` bounds the bodies' total size as well as
    their number. ``extra`` holds further ``x-`` arguments.
    """
    args: dict[str, Any] = {"x-max-length": max_length, "x-overflow": overflow}
    if max_bytes is not None:
        args["x-max-length-bytes"] = max_bytes
    if queue_type is not None:
        args["x-queue-type"] = queue_type
    args.update(extra or {})
    return args


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue bounded in messages and bytes, and the bindings that feed it."""

    name: str
    max_length: int
    max_bytes: int
    bindings: tuple[tuple[str, str], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    queue_type: str = "classic"

    def arguments(self) -> dict[str, Any]:
        """The ``x-`` arguments, identical on every declaration."""
        return queue_arguments(
            self.max_length, queue_type=self.queue_type, extra=self.extra, max_bytes=self.max_bytes
        )

    def declare(self, channel: Channel) -> None:
        """Declare the queue and its bindings."""
        channel.queue_declare(queue=self.name, durable=True, arguments=self.arguments())
        for exchange, key in self.bindings:
            channel.queue_bind(queue=self.name, exchange=exchange, routing_key=key)


EXCHANGES: tuple[tuple[str, str], ...] = (
    (UNROUTED, "fanout"),
    (TELEMETRY, "topic"),
    (TENANTS, "direct"),
    (REJECTED, "topic"),
    (EVENTS, "topic"),
)


# Exchange arguments are fixed when an exchange is declared: a ``telemetry`` declared by
# an earlier version (without its alternate exchange) must be deleted and declared again
# (``fairway declare``), see docs/architecture.md, "Per-tenant ingest".
EXCHANGE_ARGUMENTS: dict[str, dict[str, Any]] = {TELEMETRY: {"alternate-exchange": UNROUTED}}


def tenant_queue_name(tenant: str) -> str:
    """``tenant.<id>``."""
    return TENANT_QUEUE_PREFIX + tenant


def tenant_backlog_bytes(max_backlog: int, settings: Settings) -> int:
    """``x-max-length-bytes`` of a tenant queue whose cap is ``max_backlog`` readings."""
    return min(
        settings.tenant_max_backlog_bytes, max_backlog * settings.tenant_backlog_reading_bytes
    )


def tenant_queue(tenant: str, max_backlog: int, settings: Settings) -> QueueSpec:
    """The per-tenant backlog queue; what it dead-letters goes to ``rejected``.

    ``max_backlog`` is the tenant's own bound in readings. The queue holds bundles of
    readings, so the bound that holds is in bytes: ``max_backlog`` readings of
    ``tenant_backlog_reading_bytes`` each, at most ``tenant_max_backlog_bytes``; the
    count bound stays ``max_backlog`` messages (one reading each at least). Both come
    from ``settings``, so every process declares identical arguments.
    """
    return QueueSpec(
        name=tenant_queue_name(tenant),
        max_length=max_backlog,
        max_bytes=tenant_backlog_bytes(max_backlog, settings),
        bindings=((TENANTS, tenant),),
        extra={
            "x-dead-letter-exchange": REJECTED,
            "x-dead-letter-routing-key": f"dead_letter.{tenant}",
        },
        queue_type=settings.queue_type,
    )


def ingest_queue_name(tenant: str) -> str:
    """``ingest.<id>``: the tenant's devices' messages, before the relay."""
    return INGEST_QUEUE_PREFIX + tenant


def tenant_ingest_queue(tenant: str, settings: Settings) -> QueueSpec:
    """The tenant's ingest queue, bounded like ``ingest``; fed by its devices' bindings."""
    return QueueSpec(
        name=ingest_queue_name(tenant),
        max_length=settings.tenant_ingest_max_length,
        max_bytes=settings.tenant_ingest_max_bytes,
        queue_type=settings.queue_type,
    )


def device_binding_key(device: str) -> str:
    """``<device>.*``: every ``<device>.<stream>`` key (MQTT ``<device>/<stream>``)."""
    return device + ".*"


def bind_device(channel: Channel, tenant: str, device: str) -> None:
    """Route the device's messages into ``ingest.<tenant>`` (idempotent)."""
    channel.queue_bind(
        queue=ingest_queue_name(tenant), exchange=TELEMETRY, routing_key=device_binding_key(device)
    )


def unbind_device(channel: Channel, tenant: str, device: str) -> None:
    """Stop routing the device's messages into ``ingest.<tenant>`` (idempotent)."""
    channel.queue_unbind(
        queue=ingest_queue_name(tenant), exchange=TELEMETRY, routing_key=device_binding_key(device)
    )


def shared_queues(settings: Settings) -> tuple[QueueSpec, ...]:
    """``ingest`` (fed by ``telemetry``'s alternate exchange) and ``rejected``."""
    return (
        QueueSpec(
            INGEST,
            settings.ingest_max_length,
            settings.ingest_max_bytes,
            ((UNROUTED, ""),),
            queue_type=settings.queue_type,
        ),
        QueueSpec(
            REJECTED,
            settings.rejected_max_length,
            settings.rejected_max_bytes,
            ((REJECTED, "#"),),
            queue_type=settings.queue_type,
        ),
    )


def declare(channel: Channel, settings: Settings) -> None:
    """Declare every exchange and shared queue (not the per-tenant queues)."""
    for name, kind in EXCHANGES:
        channel.exchange_declare(
            exchange=name, exchange_type=kind, durable=True, arguments=EXCHANGE_ARGUMENTS.get(name)
        )
    for spec in shared_queues(settings):
        spec.declare(channel)
