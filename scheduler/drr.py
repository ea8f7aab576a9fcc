"""Weighted deficit round robin (Shreedhar & Varghese, 1995) over per-tenant buffers.

Each item has a cost (a bundle costs its number of readings; a single reading 1): DRR
with variable packet sizes, as in the paper. When a backlogged tenant's turn comes it
earns ``quantum * weight`` credit and is served while its head item costs no more
than its credit left, then goes to the back of the round keeping the credit it did
not spend (a head item dearer than one quantum is served after enough turns). An
emptied tenant keeps no credit. Work is O(1) per item and only tenants with buffered
items are visited, so idle tenants cost nothing. A backlogged tenant never waits
longer than one round: the sum of the other active tenants' quanta, plus at most one
item each beyond it.

:meth:`take` fills a batch of up to ``limit`` cost units from whole items. It may
stop in the middle of a tenant's turn (the next item does not fit the batch); the
turn resumes on the next call without earning credit twice, so fairness holds across
batches, not just within one. An item dearer than ``limit`` is taken alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class DeficitRoundRobin(Generic[T]):
    """Per-tenant FIFO buffers of costed items served in weighted DRR order."""

    def __init__(self, quantum: int) -> None:
        if quantum < 1:
            raise ValueError("quantum must be at least 1")
        self._quantum = quantum
        self._buffers: dict[str, deque[tuple[int, T]]] = {}
        self._costs: dict[str, int] = {}
        self._weights: dict[str, int] = {}
        self._deficit: dict[str, int] = {}
        self._active: deque[str] = deque()
        self._in_turn = False  # the head of _active has already earned this turn's credit
        self._size = 0
        self._cost = 0

    def set_weight(self, tenant: str, weight: int) -> None:
        """Set a tenant's weight (>= 1); it applies from the tenant's next turn."""
        if weight < 1:
            raise ValueError("weight must be at least 1")
        self._weights[tenant] = weight

    def forget(self, tenant: str) -> list[T]:
        """Drop everything of ``tenant`` (a removed tenant): its buffer, returned, and its
        weight and deficit."""
        items = self.drop(tenant)
        for state in (self._weights, self._buffers, self._deficit, self._costs):
            state.pop(tenant, None)
        return items

    def push(self, tenant: str, item: T, cost: int = 1) -> None:
        """Append ``item`` (costing ``cost`` >= 1) to ``tenant``'s buffer."""
        if cost < 1:
            raise ValueError("cost must be at least 1")
        buf = self._buffers.get(tenant)
        if buf is None:
            buf = self._buffers[tenant] = deque()
        if not buf:
            self._active.append(tenant)
            self._deficit[tenant] = 0
            self._costs[tenant] = 0
        buf.append((cost, item))
        self._costs[tenant] += cost
        self._size += 1
        self._cost += cost

    def take(self, limit: int) -> list[tuple[str, T]]:
        """Whole items worth up to ``limit`` cost units, as (tenant, item) in DRR order.

        The first item is taken even if it alone costs more than ``limit``.
        """
        out: list[tuple[str, T]] = []
        room = limit
        taken = 0
        active = self._active
        full = False
        while room > 0 and active and not full:
            tenant = active[0]
            buf = self._buffers[tenant]
            if not self._in_turn:
                self._deficit[tenant] += self._quantum * self._weights.get(tenant, 1)
                self._in_turn = True
            deficit = self._deficit[tenant]
            served = 0
            while buf:
                cost, item = buf[0]
                if cost > deficit:
                    break
                if cost > room and (out or served):
                    full = True  # the batch cannot hold it: the turn resumes next time
                    break
                buf.popleft()
                out.append((tenant, item))
                deficit -= cost
                room -= cost
                served += cost
                if room <= 0:
                    full = True
                    break
            self._deficit[tenant] = deficit
            self._costs[tenant] -= served
            taken += served
            if not buf:
                # An emptied tenant keeps no credit (DRR rule) and no state: an empty deque
                # is ~0.6 KB, kept for every tenant that ever had traffic otherwise.
                self._forget_buffer(tenant)
                active.popleft()
                self._in_turn = False
            elif buf[0][0] > deficit:  # its head costs more than the credit left: turn over
                active.rotate(-1)
                self._in_turn = False
        self._size -= len(out)
        self._cost -= taken
        return out

    def take_light(self, limit: int, exclude: Collection[str] = ()) -> list[tuple[str, T]]:
        """Everything buffered by *light* tenants (at most ``limit`` cost units each, not
        in ``exclude``), whole tenants in round order while their total fits ``limit``.

        For the scheduler's express batch: a tenant with a small buffer is taken out of
        the round entirely (as if served to empty, keeping no credit). The caller
        excludes its backlogged tenants: their buffer can be small too (most of their
        prefetch in writers or waiting for acks), and they must wait for the round.
        """
        out: list[tuple[str, T]] = []
        room = limit
        for tenant in tuple(self._active):
            cost = self._costs[tenant]
            if cost > limit or tenant in exclude:
                continue
            if cost > room:
                break
            buf = self._buffers[tenant]
            out.extend((tenant, item) for _, item in buf)
            self._size -= len(buf)
            self._cost -= cost
            room -= cost
            self._forget_buffer(tenant)
            if self._active[0] == tenant:
                self._in_turn = False
            self._active.remove(tenant)
        return out

    def _forget_buffer(self, tenant: str) -> None:
        """Drop an emptied tenant's buffer, credit and cost (``push`` makes them anew)."""
        del self._buffers[tenant]
        self._deficit.pop(tenant, None)
        self._costs.pop(tenant, None)

    def drop(self, tenant: str) -> list[T]:
        """Remove and return everything buffered for ``tenant`` (its channel went away)."""
        buf = self._buffers.pop(tenant, None)
        if not buf:
            return []
        if self._active and self._active[0] == tenant:
            self._in_turn = False
        self._active.remove(tenant)
        self._deficit.pop(tenant, None)
        self._size -= len(buf)
        self._cost -= self._costs.pop(tenant, 0)
        return [item for _, item in buf]

    def backlog(self, tenant: str) -> int:
        """Number of items buffered for ``tenant``."""
        buf = self._buffers.get(tenant)
        return len(buf) if buf else 0

    def backlog_cost(self, tenant: str) -> int:
        """Cost of the items buffered for ``tenant`` (readings)."""
        return self._costs.get(tenant, 0) if self._buffers.get(tenant) else 0

    @property
    def cost(self) -> int:
        """Cost of everything buffered (readings)."""
        return self._cost

    def tenants(self) -> Iterator[str]:
        """Tenants that have buffered items, in round order."""
        return iter(tuple(self._active))

    def __len__(self) -> int:
        return self._size
