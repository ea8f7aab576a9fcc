"""Which acknowledgements may be sent on a channel that many tenant consumers share.

Delivery tags on a channel grow by one per delivery, whichever consumer it is for, so
on a pooled channel the tags of several tenants interleave: ``A1 B2 A3 B4``.
``basic.ack(multiple=True)`` acknowledges *every* unacknowledged tag up to the one
named, of every consumer, so it is sent only over the longest prefix in which every
tag is settled (written, duplicate, or already nacked): writing A's messages never acks
B's unwritten ones.

A settled tag behind another tenant's unsettled one waits, and it still counts against
its tenant's per-consumer prefetch at the broker. A backlogged tenant sharing a channel
with a slower one could thus lose its window. So when a tenant's settled-but-waiting
tags reach a quarter of its prefetch (``stuck_limit``), they are acknowledged one by
one (``multiple=False``: exactly that delivery). A tag acked or nacked on its own is
remembered until the prefix passes it, and a ``multiple`` ack always names a tag the
broker still holds unacked: naming one already settled on its own would close the
channel (``PRECONDITION_FAILED - unknown delivery tag``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar


class Owner(Protocol):
    """Whose deliveries these are (a tenant's consumer); ``unacked`` is kept here."""

    unacked: int


OwnerT = TypeVar("OwnerT", bound=Owner)


@dataclass
class AckPlan:
    """What to send: one ``multiple`` ack up to ``upto`` (if any), then single acks."""

    upto: int | None = None
    singles: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.upto is not None or bool(self.singles)

    def merge(self, later: AckPlan) -> None:
        """Add a later plan of the same channel (sent together, see :func:`send`)."""
        if later.upto is not None:
            self.upto = later.upto if self.upto is None else max(self.upto, later.upto)
        self.singles.extend(later.singles)


def send(channel: Any, plan: AckPlan) -> None:
    """Send ``plan`` on ``channel``: single acks first, then the ``multiple`` one.

    In a merged plan a single ack's tag may lie below a later plan's ``upto``; sent
    first, it is gone from the broker before the ``multiple`` ack (which then skips
    it) instead of being covered by it and then named again (a channel error).
    """
    for tag in plan.singles:
        channel.basic_ack(tag, multiple=False)
    if plan.upto is not None:
        channel.basic_ack(plan.upto, multiple=True)


class ChannelAcks(Generic[OwnerT]):
    """Outstanding delivery tags of one shared channel, their owners, and safe acks."""

    def __init__(self, stuck_limit: Callable[[OwnerT], int]) -> None:
        self._stuck_limit = stuck_limit
        self._order: deque[int] = deque()  # tags not yet passed by the prefix, in order
        self._owner: dict[int, OwnerT] = {}  # tags still unacked at the broker
        self._settled: set[int] = set()  # settled, not acked yet
        self._gone: set[int] = set()  # acked or nacked on their own, still in _order
        self._waiting: dict[OwnerT, set[int]] = {}  # settled tags behind the prefix, by owner
        self._last = 0

    def track(self, tag: int, owner: OwnerT) -> None:
        """Record a delivery to ``owner`` (tags must arrive in increasing order)."""
        if tag <= self._last:
            raise ValueError(f"delivery tag {tag} arrived after {self._last}")
        self._last = tag
        self._order.append(tag)
        self._owner[tag] = owner
        owner.unacked += 1

    def refused(self, tag: int) -> None:
        """``tag`` was nacked on its own (dead-lettered): the broker no longer holds it."""
        owner = self._owner.pop(tag, None)
        if owner is not None:
            owner.unacked -= 1
            self._gone.add(tag)

    def settle(self, tags: Iterable[int]) -> AckPlan:
        """Mark ``tags`` settled; return the acks that are now safe to send.

        ``plan.upto`` covers exactly a prefix of settled (or already gone) tags;
        ``plan.singles`` are settled tags of owners whose waiting reached their limit.
        """
        newly: list[int] = []
        for tag in tags:
            if tag in self._owner and tag not in self._settled:
                self._settled.add(tag)
                newly.append(tag)
        plan = AckPlan()
        order, settled, gone = self._order, self._settled, self._gone
        while order and (order[0] in settled or order[0] in gone):
            tag = order.popleft()
            if tag in gone:
                gone.discard(tag)
                continue
            settled.discard(tag)
            owner = self._owner.pop(tag)
            owner.unacked -= 1
            waiting = self._waiting.get(owner)
            if waiting is not None:
                waiting.discard(tag)
                if not waiting:
                    del self._waiting[owner]
            plan.upto = tag
        touched: dict[int, OwnerT] = {}
        for tag in newly:
            if tag in settled:  # not passed by the prefix: it waits
                owner = self._owner[tag]
                self._waiting.setdefault(owner, set()).add(tag)
                touched[id(owner)] = owner
        for owner in touched.values():
            waiting = self._waiting[owner]
            if len(waiting) >= max(1, self._stuck_limit(owner)):
                self._ack_alone(owner, waiting, plan)
        return plan

    def _ack_alone(self, owner: OwnerT, waiting: set[int], plan: AckPlan) -> None:
        """Ack ``owner``'s waiting tags one by one: each names exactly its delivery."""
        for tag in sorted(waiting):
            self._settled.discard(tag)
            del self._owner[tag]
            self._gone.add(tag)
            owner.unacked -= 1
            plan.singles.append(tag)
        del self._waiting[owner]

    def reset(self) -> None:
        """Forget everything: the channel closed and the broker requeued its deliveries."""
        for owner in set(self._owner.values()):
            owner.unacked = 0
        self._order.clear()
        self._owner.clear()
        self._settled.clear()
        self._gone.clear()
        self._waiting.clear()
        self._last = 0

    @property
    def outstanding(self) -> int:
        """Deliveries the broker still holds unacked on this channel."""
        return len(self._owner)
