"""A bounded pool of channels, each consuming many tenant queues.

``scheduler_channels`` channels at most (16 by default) on the scheduler's connection;
a new tenant's consumer goes on the channel with the fewest, so with fewer tenants than
channels each tenant still has a channel of its own, and with 1,000 tenants a channel
carries about 63 consumers. Each consumer has its own prefetch (``basic.qos`` with
``global=False`` right before its ``basic.consume``, :mod:`scheduler.tenant_channel`),
which classic and quorum queues both accept. Acks are per channel and cover only
settled deliveries, whatever tenant they belong to (:mod:`scheduler.channel_acks`).

An idle consumer costs the scheduler nothing: no timer, no poll, no per-tenant work
until a delivery comes. Channels are opened as tenants are added and re-opened (after
``REOPEN_S``) when the broker closes one; the tenants on a closed channel get fresh
consumer objects, so a batch still being written for the closed channel can never ack
on its successor (its deliveries are redelivered and written again as duplicates).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pika
from pika.channel import Channel
from pika.spec import Basic

from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage.registry import Tenant
from scheduler import channel_acks, metrics
from scheduler.channel_acks import AckPlan, ChannelAcks
from scheduler.queue_declare import Declarations, declare_limit
from scheduler.tenant_channel import TenantConsumer, new_acks

log = logging.getLogger(__name__)

REOPEN_S = 1.0
# (consumer, channel, method, properties, body): pika's consumer callback with the
# tenant's consumer in front, bound with functools.partial (no Python frame between).
Deliver = Callable[[TenantConsumer, Channel, Basic.Deliver, Any, bytes], None]
Lost = Callable[[list[TenantConsumer]], None]


@dataclass(eq=False)
class PoolChannel:
    """One channel of the pool and the tenant consumers on it."""

    index: int
    channel: Channel | None = None
    opening: bool = False
    tenants: dict[str, TenantConsumer] = field(default_factory=dict)
    acks: ChannelAcks[TenantConsumer] = field(default_factory=new_acks)
    schedule: Callable[[Callable[[], None]], None] | None = None  # next loop iteration
    _pending: AckPlan = field(default_factory=AckPlan)
    _pending_on: Channel | None = None

    def send_acks(self, channel: Channel, plan: AckPlan) -> None:
        """Acks of one tenant's settle: merged with the other tenants' of the same batch
        and sent once, at the next turn of the I/O loop (one ``multiple`` ack per channel
        per batch instead of one per tenant)."""
        if self.schedule is None:
            channel_acks.send(channel, plan)
            return
        if self._pending_on is not channel:  # a re-opened channel: nothing carries over
            self._pending, self._pending_on = AckPlan(), channel
        due = bool(self._pending)
        self._pending.merge(plan)
        if not due:
            self.schedule(self._flush)

    def _flush(self) -> None:
        plan, channel = self._pending, self._pending_on
        self._pending = AckPlan()
        if plan and channel is not None and channel is self.channel and self.live:
            channel_acks.send(channel, plan)

    def flush_acks(self) -> None:
        """Send the merged acks now (a drain must not close the channel before the
        scheduled send: the broker would redeliver the last batch)."""
        if self._pending:
            self._flush()

    @property
    def live(self) -> bool:
        """True while the channel is open."""
        return self.channel is not None and self.channel.is_open

    def cancel_ok(self, frame: Any) -> None:
        """Route a ``basic.cancel-ok`` to its tenant.

        pika fires *every* pending cancel callback of a channel on its first
        ``cancel-ok`` (one-shot callbacks keyed by method), but counts repeated
        registrations of one callable: with this one method registered per cancel,
        each ``cancel-ok`` calls it exactly once, with its own frame.
        """
        for consumer in list(self.tenants.values()):
            consumer.cancel_ok(frame)


def _count(slot: PoolChannel) -> int:
    return len(slot.tenants)


class ChannelPool:
    """Tenant consumers spread over at most ``size`` channels of one connection."""

    def __init__(
        self,
        settings: Settings,
        deliver: Deliver,
        lost: Lost,
        mismatched: Callable[[str], None] = lambda _tenant: None,
        floor: Callable[[str, float], int] | None = None,
    ) -> None:
        self.settings = settings
        self.slots = [PoolChannel(i) for i in range(settings.scheduler_channels)]
        self.consumers: dict[str, TenantConsumer] = {}  # the current consumer per tenant
        self.connection: pika.SelectConnection | None = None
        self.stopping = False
        self._deliver, self._lost, self._mismatched = deliver, lost, mismatched
        # A new consumer's prefetch, from the tenant and its readings per message (0: not
        # known yet); None: scheduler_prefetch.
        self._floor = floor
        self._max_backlog: dict[str, int] = {}
        self._depth_channel: Channel | None = None
        self._depth_opening = False
        self._declarations: Declarations | None = None
        metrics.SCHED_DECLARES_WAITING.set_function(
            lambda: len(self._declarations.waiting) if self._declarations else 0
        )
        metrics.SCHED_CHANNELS.set_function(lambda: sum(1 for s in self.slots if s.live))
        for slot in self.slots:
            metrics.SCHED_CHANNEL_CONSUMERS.labels(str(slot.index)).set_function(
                partial(_count, slot)
            )

    # -- tenants -----------------------------------------------------------------------
    def flush_acks(self) -> None:
        """Send every channel's merged acks now (see :meth:`PoolChannel.flush_acks`)."""
        for slot in self.slots:
            slot.flush_acks()

    def add(self, tenant: Tenant) -> None:
        """Consume ``tenant``'s queue on the least-loaded channel (opened if needed).

        Its consumer is ``consumers[tenant.id]``, replaced whenever its channel re-opens.
        """
        self._max_backlog[tenant.id] = tenant.max_backlog
        slot = min(self.slots, key=lambda s: (len(s.tenants), s.index))
        consumer = self._consumer(slot, tenant.id)
        if slot.live:
            self._start(slot, consumer)
        else:
            self._open(slot)

    def remove(self, tenant: str) -> TenantConsumer | None:
        """Stop consuming a removed tenant's queue; its consumer (None if there was none).

        The consumer is cancelled and forgotten (a re-opened channel does not start it
        again); deliveries it still holds are settled or requeued by the caller, on the
        same channel.
        """
        consumer = self.consumers.pop(tenant, None)
        self._max_backlog.pop(tenant, None)
        if consumer is None:
            return None
        slot = self.slots[consumer.slot]
        if slot.tenants.get(tenant) is consumer:
            del slot.tenants[tenant]
        consumer.removed = True
        consumer.stop()
        return consumer

    def _consumer(self, slot: PoolChannel, tenant: str) -> TenantConsumer:
        old = self.consumers.get(tenant)  # a re-opened channel: keep what was learned
        readings_each = old.readings_each if old is not None else 0.0
        consumer = TenantConsumer(
            tenant,
            self._floor(tenant, readings_each) if self._floor else self.settings.scheduler_prefetch,
            queue=topology.tenant_queue_name(tenant),
            channel=slot.channel,
            acks=slot.acks,
            slot=slot.index,
            on_cancel_ok=slot.cancel_ok,
            send_acks=slot.send_acks,
            readings_each=readings_each,
            sized_for=readings_each,
        )
        consumer.on_message = partial(self._deliver, consumer)
        slot.tenants[tenant] = self.consumers[tenant] = consumer
        return consumer

    def _start(self, slot: PoolChannel, consumer: TenantConsumer) -> None:
        """Declare the tenant's queue (it may not exist yet), then consume it.

        The declaration goes on a channel of its own (:mod:`scheduler.queue_declare`): a
        queue of an earlier version with other arguments refuses it, which must not close
        the channel the other tenants are consumed on; such a queue is consumed as it is.
        """
        channel: Channel | None = slot.channel
        connection = self.connection
        assert channel is not None
        if connection is None or not connection.is_open:
            return  # consumed again with the next connection
        spec = topology.tenant_queue(
            consumer.tenant, self._max_backlog[consumer.tenant], self.settings
        )

        def declared() -> None:
            current = slot.tenants.get(consumer.tenant) is consumer
            if current and slot.channel is channel and slot.live and not self.stopping:
                consumer.consume()

        declarations = self._declarations
        if declarations is None or declarations.connection is not connection:
            return  # consumed again with the next connection
        declarations.declare(spec, declared, lambda _queue: self._mismatched(consumer.tenant))

    # -- channels ----------------------------------------------------------------------
    def connected(self, connection: pika.SelectConnection) -> None:
        """A new connection: open every channel that has tenants."""
        self.connection = connection
        # The pool's channels and the depth channel keep theirs; the tune set channel_max.
        limit = declare_limit(connection.params.channel_max, len(self.slots) + 2)
        self._declarations = Declarations(connection, limit)
        for slot in self.slots:
            if slot.tenants:
                self._open(slot)

    def _open(self, slot: PoolChannel) -> None:
        connection = self.connection
        if slot.opening or slot.live or self.stopping or connection is None:
            return
        if not connection.is_open:
            return
        slot.opening = True
        connection.channel(on_open_callback=lambda ch: self._opened(slot, connection, ch))

    def _opened(
        self, slot: PoolChannel, connection: pika.SelectConnection, channel: Channel
    ) -> None:
        slot.opening = False
        ioloop = connection.ioloop
        if connection is not self.connection or self.stopping:
            return
        slot.channel, slot.acks = channel, new_acks()
        slot.schedule = ioloop.add_callback
        channel.add_on_close_callback(lambda ch, why: self._closed(slot, ch, why))
        channel.add_on_cancel_callback(lambda frame: self._broker_cancel(slot, frame))
        for tenant in list(slot.tenants):
            consumer = self._consumer(slot, tenant)  # fresh: nothing of the last channel
            self._start(slot, consumer)

    def _closed(self, slot: PoolChannel, channel: Channel, why: Exception) -> None:
        """The broker requeued the channel's unacked deliveries: drop our copies."""
        if slot.channel is not channel:
            return
        gone = list(slot.tenants.values())
        for consumer in gone:
            consumer.reset()
        slot.acks.reset()
        slot.channel = None
        self._lost(gone)
        connection = self.connection
        if not self.stopping and connection is not None and connection.is_open:
            log.warning(
                "scheduler channel closed; re-opening",
                extra={"channel": slot.index, "tenants": len(gone), "why": repr(why)},
            )
            connection.ioloop.call_later(REOPEN_S, lambda: self._open(slot))

    def _broker_cancel(self, slot: PoolChannel, frame: Any) -> None:
        """The broker cancelled a consumer (its queue was deleted): declare and consume again."""
        tag = frame.method.consumer_tag
        for consumer in list(slot.tenants.values()):
            if consumer.consumer_tag == tag:
                consumer.consumer_tag = None
                log.warning(
                    "tenant queue deleted; declaring it again", extra={"tenant": consumer.tenant}
                )
                if self.connection is not None:
                    self.connection.ioloop.call_later(
                        REOPEN_S, lambda c=consumer: self._restart(slot, c)
                    )

    def _restart(self, slot: PoolChannel, consumer: TenantConsumer) -> None:
        current = slot.tenants.get(consumer.tenant) is consumer
        idle = consumer.consumer_tag is None and consumer.retiring is None
        if slot.live and current and idle and not self.stopping:
            self._start(slot, consumer)

    def depth(self, tenant: str, answer: Callable[[int], None]) -> None:
        """Ask for the ready messages of ``tenant``'s queue (``answer(count)`` later), on a
        channel of its own: a passive declare of a missing queue closes its channel."""
        channel, connection = self._depth_channel, self.connection
        if channel is not None and channel.is_open:
            channel.queue_declare(
                topology.tenant_queue_name(tenant),
                passive=True,
                callback=lambda frame: answer(frame.method.message_count),
            )
        elif not self._depth_opening and connection is not None and connection.is_open:
            self._depth_opening = True  # asked again at the next look

            def opened(ch: Channel) -> None:
                self._depth_opening = False
                if connection is self.connection:
                    self._depth_channel = ch

            connection.channel(on_open_callback=opened)

    def lost(self) -> list[TenantConsumer]:
        """The connection is gone: every channel with it; return the consumers dropped."""
        gone: list[TenantConsumer] = []
        for slot in self.slots:
            for consumer in slot.tenants.values():
                consumer.reset()
                gone.append(consumer)
            slot.acks.reset()
            slot.channel, slot.opening = None, False
        self.connection = None
        self._declarations = None
        self._depth_channel, self._depth_opening = None, False
        return gone

    def stop(self) -> None:
        """Drain: cancel every consumer; deliveries already sent are still written."""
        self.stopping = True
        for consumer in self.consumers.values():
            consumer.stop()
