"""One tenant queue's consumer on a pooled channel: its prefetch and the acks owed on it.

Many tenants share a channel (:mod:`scheduler.channel_pool`); each has its own
consumer. The prefetch is per consumer (``basic.qos`` with ``global=False``), the only
kind a quorum queue accepts and the only kind RabbitMQ 4 keeps. It binds consumers
started *after* the ``basic.qos``, so every ``basic.consume`` is sent right after its
own ``basic.qos`` (pika sends a channel's methods in order, so another tenant's
``basic.qos`` cannot come between), and changing a tenant's share *recycles* its
consumer on the same channel: cancel the current consumer, start a new one.

* Deliveries the cancelled ("retiring") consumer already received stay unacked on
  the channel and are written and acked as usual: delivery tags are per channel, so
  the channel's :class:`~scheduler.channel_acks.ChannelAcks` covers both consumers (and
  every other tenant's on the channel), and the DRR buffer is keyed by tenant, not by
  consumer.
* Deliveries still on the wire when the cancel is sent reach the tenant like any
  other (:func:`cancel_keeping_deliveries`); pika alone would requeue them.
* At most one consumer retires at a time: a tenant is not recycled again until its
  retiring consumer is cancelled at the broker and holds nothing, so a tenant never
  holds more than two consumers' prefetch.
* Growing starts the new consumer at once (a tenant that starts flooding gets its
  share within the tick). Shrinking starts it only once the retiring consumer holds
  no more than ``old - new``, so a shrinking tenant never holds more than its old
  prefetch. Either way the tenant keeps messages buffered across the switch.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pika.channel import Channel

from scheduler import channel_acks
from scheduler.channel_acks import AckPlan, ChannelAcks
from scheduler.metrics import PREFETCH_CHANGES

log = logging.getLogger(__name__)

# At prefetch 1 every delivery fills the prefetch, so that alone says nothing of a backlog
# (every tenant would look backlogged, and be polled and excluded from express batches).
# A delivery that follows the tenant's ack this closely was waiting at the broker.
FOLLOWS_ACK_S = 0.1

OnMessage = Callable[[Channel, Any, Any, bytes], None]


def cancel_keeping_deliveries(
    channel: Channel, consumer_tag: str, on_cancel_ok: Callable[[Any], None]
) -> None:
    """``basic.cancel`` whose in-flight deliveries still reach the consumer's callback.

    pika rejects with requeue every delivery that arrives for a consumer it is
    cancelling. Here those deliveries are the tenant's next messages: a requeue
    would reorder them and, on a quorum queue, count against the delivery limit.
    pika keeps the callback until ``basic.cancel-ok``, after which the broker sends
    nothing more for the tag, so un-marking the tag is all it takes.
    """
    channel.basic_cancel(consumer_tag, callback=on_cancel_ok)
    cancelled = getattr(channel, "_cancelled", None)  # pika 1.x internals, checked
    if isinstance(cancelled, set):
        cancelled.discard(consumer_tag)
    else:  # a pika without it: in-flight deliveries are requeued, nothing is lost
        log.warning("pika internals changed; in-flight deliveries of a recycled consumer requeue")


def stuck_limit(consumer: TenantConsumer) -> int:
    """Settled deliveries of a tenant that may wait behind another tenant's before they
    are acked one by one: a quarter of its prefetch (see :mod:`scheduler.channel_acks`)."""
    return max(1, consumer.prefetch // 4)


def new_acks() -> ChannelAcks[TenantConsumer]:
    """The ack tracker of one (pooled) channel."""
    return ChannelAcks(stuck_limit)


def settle_together(settled: dict[TenantConsumer, list[tuple[int, str]]]) -> None:
    """Settle the (delivery tag, consumer tag) pairs of tenants sharing one channel (and
    its :class:`ChannelAcks`) at once, and send what the channel may ack now.

    One settle per channel and batch, not one per tenant: with thousands of tenants a
    batch holds a few readings of each, and settled one tenant at a time, a tenant's
    settled tags would wait behind another's that the same batch settles next (and,
    at its stuck limit, go out as single acks), the prefix being walked per tenant.
    """
    first = next(iter(settled))
    delivery_tags = []
    for consumer, pairs in settled.items():
        for delivery_tag, consumer_tag in pairs:
            delivery_tags.append(delivery_tag)
            consumer.held[consumer_tag] -= 1
    plan = first.acks.settle(delivery_tags)
    if plan and first.channel is not None:
        now = time.monotonic()
        for consumer in settled:
            consumer.acked_at = now
        if first.send_acks is not None:
            first.send_acks(first.channel, plan)
        else:
            channel_acks.send(first.channel, plan)
    for consumer in settled:
        consumer._progress()


@dataclass(eq=False)
class TenantConsumer:
    """One tenant queue's (at most two) consumers on a shared channel, and its acks."""

    tenant: str
    prefetch: int  # granted to the current (or next) consumer
    queue: str = ""
    channel: Channel | None = None
    on_message: OnMessage | None = None
    consumer_tag: str | None = None  # the consumer receiving new deliveries
    retiring: str | None = None  # cancelled consumer whose deliveries are not all settled
    acks: ChannelAcks[TenantConsumer] = field(default_factory=new_acks)  # the channel's
    unacked: int = 0  # deliveries the broker counts against this tenant (kept by ``acks``)
    slot: int = -1  # index of its channel in the pool
    backlogged: bool = False  # holds a share of the buffer budget (scheduler.prefetch)
    saturated: bool = False  # reached its prefetch since the last look (more may wait)
    acked_at: float = float("-inf")  # when an ack of its deliveries last went out
    # Readings per message it delivers (moving average of x-fairway-readings; 0: none
    # seen yet), and the value its prefetch was last sized for (scheduler.prefetch).
    readings_each: float = 0.0
    sized_for: float = 0.0
    held: Counter[str] = field(default_factory=Counter)  # unsettled deliveries per consumer
    # Where this channel's basic.cancel-ok frames are dispatched (the pool's one router;
    # see PoolChannel.cancel_ok); None: straight to this consumer.
    on_cancel_ok: Callable[[Any], None] | None = None
    # Where acks go (the pool's per-channel batching, PoolChannel.send_acks); None: sent
    # at once.
    send_acks: Callable[[Channel, AckPlan], None] | None = None
    removed: bool = False  # the tenant was removed: deliveries go back to the queue
    _cancel_pending: bool = False  # basic.cancel-ok of the retiring consumer not yet seen
    _start_at: int | None = None  # start the next consumer once retiring holds <= this
    _stopped: bool = False

    @property
    def live(self) -> bool:
        """True while acks may be sent on this channel."""
        return self.channel is not None and self.channel.is_open

    # -- consumers -------------------------------------------------------------------
    def consume(self) -> None:
        """Start a consumer under ``prefetch``: its own ``basic.qos``, then ``basic.consume``."""
        assert self.channel is not None and self.on_message is not None
        self._start_at = None
        self.channel.basic_qos(prefetch_count=self.prefetch, global_qos=False)
        self.consumer_tag = self.channel.basic_consume(self.queue, self.on_message)

    def change_prefetch(self, wanted: int) -> bool:
        """Recycle the consumer under prefetch ``wanted``; False when not possible now.

        Not possible while the channel is down or stopping, before the first consumer
        started, or while an earlier recycle has not finished (the next tick retries).
        """
        if (
            not self.live
            or self._stopped
            or self.consumer_tag is None
            or self.retiring is not None
            or wanted == self.prefetch
        ):
            return False
        assert self.channel is not None
        old, self.prefetch = self.prefetch, wanted
        self.retiring, self.consumer_tag = self.consumer_tag, None
        self._cancel_pending = True
        cancel_keeping_deliveries(self.channel, self.retiring, self.on_cancel_ok or self.cancel_ok)
        PREFETCH_CHANGES.labels(self.tenant).inc()
        if wanted > old:
            self.consume()  # the broker handles it after the cancel: never two at once
        else:
            self._start_at = old - wanted
            self._progress()
        return True

    def cancel_ok(self, frame: Any) -> None:
        """A ``basic.cancel-ok`` on the channel: the retiring consumer's, or another's."""
        if frame.method.consumer_tag == self.retiring:
            self._cancel_pending = False
            self._progress()

    def _progress(self) -> None:
        """Start the next consumer, or forget the retiring one, when it is time."""
        if self.retiring is None or self._cancel_pending or not self.live:
            return
        held = self.held[self.retiring]
        if self._start_at is not None and held <= self._start_at and not self._stopped:
            self.consume()
        if held == 0 and self._start_at is None:
            del self.held[self.retiring]
            self.retiring = None

    def stop(self) -> None:
        """Stop consuming (drain): cancel the current consumer, start no other.

        Deliveries already on the wire are buffered and written by the drain like
        the others (or requeued with the channel if the drain deadline passes).
        """
        self._stopped = True
        self._start_at = None
        if self.live and self.consumer_tag is not None:
            assert self.channel is not None
            cancel_keeping_deliveries(
                self.channel, self.consumer_tag, self.on_cancel_ok or (lambda _frame: None)
            )

    # -- deliveries and acks -----------------------------------------------------------
    def delivered(self, delivery_tag: int, consumer_tag: str) -> None:
        """Record a delivery (from the current or the retiring consumer)."""
        self.acks.track(delivery_tag, self)
        self.held[consumer_tag] += 1
        if self.unacked >= self.prefetch and (
            self.prefetch > 1 or time.monotonic() - self.acked_at < FOLLOWS_ACK_S
        ):
            self.saturated = True

    def refuse(self, delivery_tag: int) -> None:
        """Nack one delivery without requeue (it dead-letters to ``rejected``)."""
        assert self.channel is not None
        self.channel.basic_nack(delivery_tag, requeue=False)
        self.acks.refused(delivery_tag)

    def requeue(self, delivery_tag: int, consumer_tag: str) -> None:
        """Nack one delivery back to its queue (the tenant was removed: it waits there)."""
        self.held[consumer_tag] -= 1
        if self.live:
            assert self.channel is not None
            self.channel.basic_nack(delivery_tag, requeue=True)
            self.acks.refused(delivery_tag)

    def settle(self, tags: Iterable[tuple[int, str]]) -> None:
        """Settle (delivery tag, consumer tag) pairs; send what the channel may ack now.

        The ``multiple`` ack covers a prefix of the *channel's* tags that are all
        settled, which may include other tenants' (:mod:`scheduler.channel_acks`).
        """
        settle_together({self: list(tags)})

    def reset(self) -> None:
        """The channel closed: the broker requeued every unacked delivery.

        The channel's tracker is reset by the pool, once for all its tenants.
        """
        self.unacked = 0
        self.saturated = False
        self.held.clear()
        self.consumer_tag = self.retiring = self._start_at = None
        self._cancel_pending = False
