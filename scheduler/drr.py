"""Weighted deficit round robin (Shreedhar & Varghese, 1995) over per-tenant buffers.

Each message costs 1. When a backlogged tenant's turn comes it earns
``quantum * weight`` credit and is served until its credit or its buffer runs out,
then goes to the back of the round. Work is O(1) per message and only tenants with
buffered messages are visited, so idle tenants cost nothing. A backlogged tenant
never waits longer than one round: the sum of the other active tenants' quanta.

:meth:`take` may stop in the middle of a tenant's turn (the batch is full); the turn
resumes on the next call without earning credit twice, so fairness holds across
batches, not just within one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class DeficitRoundRobin(Generic[T]):
    """Per-tenant FIFO buffers served in weighted DRR order."""

    def __init__(self, quantum: int) -> None:
        if quantum < 1:
            raise ValueError("quantum must be at least 1")
        self._quantum = quantum
        self._buffers: dict[str, deque[T]] = {}
        self._weights: dict[str, int] = {}
        self._deficit: dict[str, int] = {}
        self._active: deque[str] = deque()
        self._in_turn = False  # the head of _active has already earned this turn's credit
        self._size = 0

    def set_weight(self, tenant: str, weight: int) -> None:
        """Set a tenant's weight (>= 1); it applies from the tenant's next turn."""
        if weight < 1:
            raise ValueError("weight must be at least 1")
        self._weights[tenant] = weight

    def push(self, tenant: str, item: T) -> None:
        """Append ``item`` to ``tenant``'s buffer."""
        buf = self._buffers.get(tenant)
        if buf is None:
            buf = self._buffers[tenant] = deque()
        if not buf:
            self._active.append(tenant)
            self._deficit[tenant] = 0
        buf.append(item)
        self._size += 1

    def take(self, limit: int) -> list[tuple[str, T]]:
        """Up to ``limit`` (tenant, item) pairs in DRR order."""
        out: list[tuple[str, T]] = []
        active = self._active
        while len(out) < limit and active:
            tenant = active[0]
            buf = self._buffers[tenant]
            if not self._in_turn:
                self._deficit[tenant] += self._quantum * self._weights.get(tenant, 1)
                self._in_turn = True
            served = min(len(buf), self._deficit[tenant], limit - len(out))
            for _ in range(served):
                out.append((tenant, buf.popleft()))
            self._deficit[tenant] -= served
            if not buf:
                self._deficit[tenant] = 0  # an emptied tenant keeps no credit (DRR rule)
                active.popleft()
                self._in_turn = False
            elif self._deficit[tenant] == 0:
                active.rotate(-1)
                self._in_turn = False
        self._size -= len(out)
        return out

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
        return list(buf)

    def backlog(self, tenant: str) -> int:
        """Number of items buffered for ``tenant``."""
        buf = self._buffers.get(tenant)
        return len(buf) if buf else 0

    def tenants(self) -> Iterator[str]:
        """Tenants that have buffered items, in round order."""
        return iter(tuple(self._active))

    def __len__(self) -> int:
        return self._size
