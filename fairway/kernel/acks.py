"""Which acknowledgements may be sent on one AMQP channel.

Delivery tags on a channel grow by one per delivery. ``basic.ack(multiple=True)``
acknowledges *every* unacknowledged tag up to the one named, so it is only safe when
all of them are settled (written, confirmed, or already nacked). Work finishes out of
order (parallel writers, registry look-ups, DRR interleaving), so this tracker keeps
the tags in arrival order and answers with one ``multiple`` ack for the longest
settled prefix; settled tags behind an unsettled one wait for it, unless the caller
acks them one by one (:meth:`AckWatermark.take_settled`: the relay does, behind a
delivery whose ack it holds back on purpose). A ``multiple`` ack never names a tag
already acked one by one: RabbitMQ would close the channel ("unknown delivery tag").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class AckWatermark:
    """Outstanding delivery tags of one channel and the safe ack watermark."""

    def __init__(self) -> None:
        self._outstanding: deque[int] = deque()
        self._settled: set[int] = set()
        self._acked: set[int] = set()  # acked one by one, still in _outstanding
        self._last = 0  # highest tag tracked since the channel opened

    def track(self, tag: int) -> None:
        """Record a new delivery (tags must arrive in increasing order)."""
        if tag <= self._last:
            raise ValueError(f"delivery tag {tag} arrived after {self._last}")
        self._last = tag
        self._outstanding.append(tag)

    def settle(self, tags: Iterable[int]) -> int | None:
        """Mark ``tags`` settled; return the tag to ack with ``multiple=True``, if any.

        The returned tag covers exactly the settled prefix: every outstanding tag up
        to it is settled, and none after it is covered.
        """
        self._settled.update(tags)
        outstanding, settled, acked = self._outstanding, self._settled, self._acked
        upto = None
        while outstanding:
            head = outstanding[0]
            if head in acked:
                acked.discard(outstanding.popleft())
            elif head in settled:
                upto = outstanding.popleft()
                settled.discard(upto)
            else:
                break
        return upto

    def take_settled(self) -> list[int]:
        """Settled tags waiting behind an unsettled one, to be acked one by one now.

        They stay in arrival order until the unsettled tag before them is settled, then
        leave with it; no later ``multiple`` ack names them.
        """
        taken = sorted(self._settled)
        self._acked.update(taken)
        self._settled.clear()
        return taken

    @property
    def head(self) -> int | None:
        """The oldest tag not yet acked (None: nothing outstanding)."""
        for tag in self._outstanding:
            if tag not in self._acked:
                return tag
        return None

    def reset(self) -> None:
        """Forget everything: the channel closed and the broker requeued its deliveries."""
        self._outstanding.clear()
        self._settled.clear()
        self._acked.clear()
        self._last = 0

    @property
    def outstanding(self) -> int:
        """Deliveries not yet covered by an ack."""
        return len(self._outstanding) - len(self._acked)
