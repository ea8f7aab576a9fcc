"""Declaring a tenant queue on a channel of its own, so a refusal closes nothing else.

A tenant queue declared by the previous version carries other bounds (before bundles,
``x-max-length-bytes`` was the same for every tenant), and RabbitMQ answers a
declaration with other arguments with ``406 PRECONDITION_FAILED``, which closes the
channel it was sent on. Sent on a consuming channel, that would close every consumer on
it, again at each re-open. Declared here on a throwaway channel instead: the queue is
created if missing; if it exists with other arguments it is consumed as it is
(``on_done`` is called either way, ``mismatched`` is told which tenant), so messages
queued before an upgrade are still written. The channel is closed once answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pika
from pika.channel import Channel
from pika.exceptions import ChannelClosedByBroker

from fairway.kernel.topology import QueueSpec

log = logging.getLogger(__name__)

PRECONDITION_FAILED = 406


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
) -> None:
    """Declare ``spec`` on a channel of its own; then ``on_done()`` (once).

    ``mismatched(queue)`` is called first when the queue exists with other arguments.
    A channel closed for another reason (connection lost) also ends in ``on_done``: the
    caller's own channel tells it whether consuming can go on.
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
