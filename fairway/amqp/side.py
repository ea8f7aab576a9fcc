"""Live events on the ``events`` exchange: coalescing written batches, publishing.

* :func:`coalesce` (pure) turns one written batch of tenant-queue bodies into at most
  one ``telemetry.<tenant>.<device>`` event per device: the latest reading (by device
  time) and, per numeric metric, the batch's count, min and max, so alert rules still
  see a spike that coalescing hides.
* :class:`EventPublisher` publishes events over its *own* connection on the caller's
  I/O loop. RabbitMQ blocks a connection that publishes during a resource alarm and
  then stops reading its socket, acks included; a consumer that published on its
  consuming connection would see its acks stall. Events are transient and published
  without confirms: a live notification is best-effort, the reading itself is durable.
  While the publisher is down or blocked, or its socket has :data:`MAX_BUFFERED_BYTES`
  waiting unsent (a stalled peer, no resource alarm), events are dropped and counted,
  never queued without bound. An event's frames are packed at once and the events of one call are
  written together (:mod:`fairway.amqp.fastpublish`), not through pika's
  ``basic_publish``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pika
from pika.adapters.select_connection import IOLoop
from pika.channel import Channel

from fairway.amqp.backoff import Reconnect
from fairway.amqp.connection import Brokers
from fairway.amqp.fastconn import SelectConnection
from fairway.amqp.fastpublish import FixedPublish
from fairway.kernel import topology

log = logging.getLogger(__name__)


JSON = "application/json"
TRANSIENT = 1


def event_properties() -> pika.BasicProperties:
    """Transient JSON message properties of every event."""
    return pika.BasicProperties(content_type=JSON, delivery_mode=TRANSIENT)


# One instance for every event (pika only reads it): the scheduler publishes up to one
# event per device of every batch, so with readings spread over many devices, about one
# per reading (issue 17).
# Encoded once, at import, by EventPublisher's FixedPublish: a property that should vary
# per event (a timestamp) needs a publish path of its own, not a change to this object.
EVENT_PROPERTIES = event_properties()


class SideConnection:
    """A second connection on an existing pika I/O loop, re-opened with backoff.

    Reconnects follow the shared policy (:class:`fairway.amqp.backoff.Reconnect`), each
    to the next address of ``brokers`` (its own, apart from the main connection's).
    ``on_channel`` is called with a fresh channel after every (re)connect. Used for
    publishing events and, by the monitor, for the event exchange's vhost.
    """

    def __init__(
        self,
        brokers: Brokers,
        ioloop: IOLoop,
        on_channel: Callable[[Channel], None] | None = None,
    ) -> None:
        self.brokers = brokers
        self.ioloop = ioloop
        self.on_channel = on_channel
        self.connection: pika.SelectConnection | None = None
        self.channel: Channel | None = None
        self.blocked = False
        self._reconnect = Reconnect(self.name, ioloop.call_later, self._connect)
        self._started = False
        self._closing = False

    @property
    def name(self) -> str:
        """The connection name the broker shows."""
        return self.brokers.name

    def start(self) -> None:
        """Connect (once; later calls do nothing). Call on the I/O loop."""
        if not self._started:
            self._started = True
            self._connect()

    def close(self) -> None:
        """Close for good."""
        self._closing = True
        if self.connection is not None and self.connection.is_open:
            self.connection.close()

    @property
    def ready(self) -> bool:
        """True while the channel is open and the broker has not blocked us."""
        return self.channel is not None and self.channel.is_open and not self.blocked

    def _connect(self) -> None:
        if self._closing:
            return
        self.connection = SelectConnection(  # its writes joined: events come in bursts
            self.brokers.parameters(),
            on_open_callback=self._on_open,
            on_open_error_callback=lambda _c, exc: self._retry(f"connect failed: {exc!r}"),
            on_close_callback=lambda _c, why: self._on_closed(why),
            custom_ioloop=self.ioloop,
        )

    def _retry(self, why: str) -> None:
        self.connection = None
        self.brokers.lost()
        if not self._closing:
            self._reconnect.schedule(f"{why} (next: {self.brokers.address})")

    def _on_open(self, connection: pika.SelectConnection) -> None:
        self._reconnect.succeeded()
        self.brokers.opened()
        self.blocked = False
        connection.add_on_connection_blocked_callback(lambda *_: self._set_blocked(True))
        connection.add_on_connection_unblocked_callback(lambda *_: self._set_blocked(False))
        self._open_channel()

    def _set_blocked(self, blocked: bool) -> None:
        self.blocked = blocked
        log.warning(
            "connection blocked" if blocked else "connection unblocked",
            extra={"service": self.name},
        )

    def _open_channel(self) -> None:
        if self.connection is not None and self.connection.is_open and not self._closing:
            self.connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Channel) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        if self.on_channel is not None:
            self.on_channel(channel)

    def _on_channel_closed(self, channel: Channel, why: Exception) -> None:
        if channel is self.channel:
            self.channel = None
        if self.connection is not None and self.connection.is_open and not self._closing:
            self._reconnect.schedule(f"channel closed: {why!r}", then=self._open_channel)

    def _on_closed(self, why: Exception) -> None:
        self.channel = None
        self._retry(f"connection closed: {why!r}")


# Unsent bytes in the publisher's socket buffer beyond which events are dropped: about
# 3,000 events, seconds of a scheduler's events, so only a stalled connection reaches it.
MAX_BUFFERED_BYTES = 1024 * 1024


def _buffered(channel: Channel) -> int:
    """Bytes written to ``channel``'s connection and not yet sent (pika's transport)."""
    transport = getattr(channel.connection, "_transport", None)
    return transport.get_write_buffer_size() if transport is not None else 0


class EventPublisher(SideConnection):
    """Publishes JSON events to ``events``, best-effort, on its own connection."""

    # Every event has the same exchange and properties: their encoding is done once.
    _frames = FixedPublish(topology.EVENTS, EVENT_PROPERTIES)

    def publish(self, routing_key: str, event: dict[str, Any]) -> bool:
        """Publish one event now; False (nothing sent) while down or blocked."""
        return self.publish_all([(routing_key, event)])[0] == 1

    def publish_all(self, events: Iterable[tuple[str, dict[str, Any]]]) -> tuple[int, int]:
        """Publish each ``(routing key, event)`` now, in one write; return (published,
        dropped). All are dropped while down or blocked or while the socket holds
        :data:`MAX_BUFFERED_BYTES` unsent, and an event whose routing key AMQP cannot
        carry (over 255 bytes; ids keep keys under 140, so none today)."""
        if not self.ready or _buffered(self.channel) >= MAX_BUFFERED_BYTES:
            return 0, sum(1 for _ in events)
        assert self.channel is not None
        return self._frames.write(
            self.channel, [(routing_key, orjson.dumps(event)) for routing_key, event in events]
        )
