"""Declaring a tenant queue on a channel of its own, so a refusal closes nothing else.

A tenant queue declared by the previous version carries other bounds (before bundles,
``x-max-length-bytes`` was the same for every tenant), and RabbitMQ answers a
declaration with other arguments with ``406 PRECONDITION_FAILED``, which closes the
channel it was sent on. Sent on a consuming channel, that would close every consumer on
it, again at each re-open. Declared here on a throwaway channel instead: the queue is
created if missing; if it exists with other arguments it is consumed as it is
(``on_done`` is called either way, ``mismatched`` is told which tenant), so messages
queued before an upgrade are still written. The channel is closed once answered.

A connection has at most ``channel_max`` channels (2,047 on RabbitMQ by default), and a
pooled channel re-opening starts all its tenants at once (about 625 each with 10,000
tenants on 16 channels): :class:`Declarations` keeps at most ``DECLARES_IN_FLIGHT`` of
these throwaway channels open per connection and queues the rest.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import pika
from pika.channel import Channel
from pika.exceptions import ChannelClosedByBroker

from fairway.kernel.topology import QueueSpec

log = logging.getLogger(__name__)

PRECONDITION_FAILED = 406
DECLARES_IN_FLIGHT = 64


def inequivalent_arguments(why: Exception) -> bool:
    """The broker closed a channel because a declaration's arguments differ."""
    return (
        isinstance(why, ChannelClosedByBroker)
        and why.reply_code == PRECONDITION_FAILED
        and "inequivalent arg" in str(why.reply_text)
    )


def declare_apart(
    connection: pika.SelectConnection,
    spec: QueueSpec,
    on_done: Callable[[], None],
    mismatched: Callable[[str], None],
    released: Callable[[], None] = lambda: None,
) -> None:
    """Declare ``spec`` on a channel of its own; then ``on_done()`` (once).

    ``mismatched(queue)`` is called first when the queue exists with other arguments.
    A channel closed for another reason (connection lost) also ends in ``on_done``: the
    caller's own channel tells it whether consuming can go on. ``released()`` is called
    once the channel is closed (pika frees its number only after the close callbacks).
    """
    answered = False

    def finish() -> None:
        nonlocal answered
        if not answered:
            answered = True
            on_done()

    def closed(_channel: Channel, why: Exception) -> None:
        if not answered and inequivalent_arguments(why):
            log.warning(
                "queue has the arguments of an earlier version; consuming it as it is"
                " (drain, delete and declare it again to apply the new ones)",
                extra={"queue": spec.name, "why": repr(why)},
            )
            mismatched(spec.name)
        finish()
        released()

    def declared(channel: Channel) -> None:
        finish()
        if channel.is_open:
            channel.close()

    def opened(channel: Channel) -> None:
        channel.add_on_close_callback(closed)
        channel.queue_declare(
            spec.name,
            durable=True,
            arguments=spec.arguments(),
            callback=lambda _frame: declared(channel),
        )

    def on_open(channel: Any) -> None:
        opened(channel)

    connection.channel(on_open_callback=on_open)


def declare_limit(channel_max: int, reserved: int, wanted: int = DECLARES_IN_FLIGHT) -> int:
    """Declarations in flight on a connection negotiated at ``channel_max`` channels
    (0: no limit) of which ``reserved`` are kept for other uses: at least one."""
    if channel_max <= 0:
        return wanted
    return max(1, min(wanted, channel_max - reserved))


class Declarations:
    """Tenant queue declarations on one connection, at most ``limit`` channels at once
    (each takes a channel of its own until it is closed, :func:`declare_apart`); the
    others wait their turn."""

    def __init__(self, connection: pika.SelectConnection, limit: int) -> None:
        self.connection = connection
        self.limit = limit
        self.in_flight = 0
        self.waiting: deque[tuple[QueueSpec, Callable[[], None], Callable[[str], None]]]
        self.waiting = deque()

    def declare(
        self, spec: QueueSpec, on_done: Callable[[], None], mismatched: Callable[[str], None]
    ) -> None:
        """As :func:`declare_apart`, once fewer than ``limit`` are in flight."""
        self.waiting.append((spec, on_done, mismatched))
        self._next()

    def _next(self) -> None:
        while self.in_flight < self.limit and self.waiting and self.connection.is_open:
            spec, on_done, mismatched = self.waiting.popleft()
            self.in_flight += 1
            declare_apart(self.connection, spec, on_done, mismatched, self._released)

    def _released(self) -> None:
        # Called from the channel's close callbacks, before pika frees its number: the
        # next declaration opens its channel at the next turn of the I/O loop.
        self.in_flight -= 1
        self.connection.ioloop.add_callback(self._next)
