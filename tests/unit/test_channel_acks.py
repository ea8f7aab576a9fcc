"""Acks on a channel many tenants share (scheduler/channel_acks.py).

The rule under test: an ack never covers a delivery that is not settled, whoever it
belongs to; a tenant whose settled deliveries wait behind another tenant's gets them
acked one by one past its limit; a ``multiple`` ack never names a tag the broker no
longer holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from scheduler.channel_acks import ChannelAcks
from scheduler.channel_pool import PoolChannel


@dataclass(eq=False)
class Tenant:
    name: str
    limit: int = 1000
    unacked: int = 0


def acks() -> ChannelAcks[Tenant]:
    return ChannelAcks(lambda owner: owner.limit)


def test_interleaved_tenants_ack_only_the_settled_prefix() -> None:
    tracker = acks()
    a, b = Tenant("a"), Tenant("b")
    for tag, owner in ((1, a), (2, b), (3, a), (4, b)):
        tracker.track(tag, owner)
    plan = tracker.settle([1, 3])  # a's batch written; b's 2 is not
    assert plan.upto == 1 and plan.singles == []  # 3 waits: acking it would cover 2
    assert a.unacked == 1 and b.unacked == 2
    plan = tracker.settle([2])
    assert plan.upto == 3  # now 1..3 are all settled
    assert tracker.settle([4]).upto == 4
    assert a.unacked == b.unacked == 0 and tracker.outstanding == 0


def test_settled_deliveries_waiting_behind_another_tenant_are_acked_alone_past_the_limit() -> None:
    tracker = acks()
    slow, busy = Tenant("slow"), Tenant("busy", limit=3)
    tracker.track(1, slow)
    for tag in range(2, 8):
        tracker.track(tag, busy)
    assert not tracker.settle([2, 3])  # two waiting behind slow's 1: under the limit
    plan = tracker.settle([4])  # three: busy's limit
    assert plan.upto is None and plan.singles == [2, 3, 4]
    assert busy.unacked == 3 and slow.unacked == 1
    # slow's delivery is written: the multiple ack names it, not a tag already acked
    plan = tracker.settle([1])
    assert plan.upto == 1 and plan.singles == []
    plan = tracker.settle([5, 6, 7])
    assert plan.upto == 7 and busy.unacked == 0


def test_a_multiple_ack_never_names_a_tag_settled_on_its_own() -> None:
    tracker = acks()
    a, b = Tenant("a", limit=1), Tenant("b")
    tracker.track(1, b)
    tracker.track(2, a)
    tracker.track(3, b)
    assert tracker.settle([2]).singles == [2]  # alone: 1 is b's, unsettled
    tracker.refused(3)  # nacked (dead-lettered) on its own
    plan = tracker.settle([1, 3])
    assert plan.upto == 1  # 2 and 3 are gone from the broker: naming them would fail


def test_random_interleavings_never_ack_an_unsettled_delivery() -> None:
    rng = random.Random(17)
    for _round in range(200):
        tracker = acks()
        owners = [Tenant(f"t{i}", limit=rng.choice([1, 2, 5, 1000])) for i in range(4)]
        tags = list(range(1, 41))
        owner_of = {tag: rng.choice(owners) for tag in tags}
        for tag in tags:
            tracker.track(tag, owner_of[tag])
        acked: set[int] = set()
        settled: set[int] = set()
        pending = tags[:]
        rng.shuffle(pending)
        while pending:
            k = rng.randint(1, 6)
            step, pending = pending[:k], pending[k:]
            settled.update(step)
            plan = tracker.settle(step)
            if plan.upto is not None:
                covered = {t for t in tags if t <= plan.upto and t not in acked}
                assert plan.upto not in acked, "a multiple ack named a tag already acked"
                assert covered <= settled, f"acked unsettled {sorted(covered - settled)}"
                acked |= covered
            for tag in plan.singles:
                assert tag in settled and tag not in acked
                acked.add(tag)
        assert acked == set(tags)
        assert all(o.unacked == 0 for o in owners)


def test_reset_forgets_everything() -> None:
    tracker = acks()
    a = Tenant("a")
    tracker.track(5, a)
    tracker.reset()
    assert a.unacked == 0 and tracker.outstanding == 0
    tracker.track(1, a)  # tags start again on a new channel
    assert tracker.settle([1]).upto == 1


class Recording:
    is_open = True

    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.acks.append((delivery_tag, multiple))


def test_a_batchs_acks_are_merged_per_channel_singles_first() -> None:
    channel = Recording()
    later: list[Any] = []
    slot = PoolChannel(0, channel=channel, schedule=later.append)  # type: ignore[arg-type]
    slot.acks = acks()  # type: ignore[assignment]
    a, b = Tenant("a", limit=1), Tenant("b")
    for tag, owner in ((1, b), (2, a), (3, a)):
        slot.acks.track(tag, owner)
    slot.send_acks(channel, slot.acks.settle([2]))  # type: ignore[arg-type]  # 2 alone
    slot.send_acks(channel, slot.acks.settle([1, 3]))  # type: ignore[arg-type]  # up to 3
    assert channel.acks == [] and len(later) == 1  # one flush for the batch
    later[0]()
    # 2 first: the multiple ack up to 3 then skips it; the other way round the broker
    # would ack 2 with the multiple one and refuse the single ack (channel closed).
    assert channel.acks == [(2, False), (3, True)]


def test_a_drain_sends_the_merged_acks_before_the_loop_turns() -> None:
    """The drain closes channels as soon as nothing is buffered or in flight: the last
    batch's merged acks are sent then, not at the next loop turn (which would find the
    channel closing, and the broker would redeliver the batch)."""
    channel = Recording()
    later: list[Any] = []
    slot = PoolChannel(0, channel=channel, schedule=later.append)  # type: ignore[arg-type]
    slot.acks = acks()  # type: ignore[assignment]
    a = Tenant("a")
    slot.acks.track(1, a)
    slot.send_acks(channel, slot.acks.settle([1]))  # type: ignore[arg-type]
    assert channel.acks == []
    slot.flush_acks()
    assert channel.acks == [(1, True)]
    later[0]()  # the scheduled flush finds nothing left to send
    slot.flush_acks()
    assert channel.acks == [(1, True)]
