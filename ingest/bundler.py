"""Bundle assembly: a tenant's accepted readings, gathered into one message for its queue.

The relay adds each accepted reading (already serialised, :func:`fairway.kernel.contract.
bundle_part`) to its tenant's open bundle; a bundle is flushed (handed to ``publish``)

* ``count``: when it holds ``max_readings`` readings;
* ``bytes``: when its body has reached ``max_bytes``, or before a reading that would
  take it past them (so a body exceeds ``max_bytes`` only when one reading alone does:
  readings are never split);
* ``linger``: ``linger_s`` after its first reading (0: on the I/O loop's next turn);
* ``drain``: when the process stops (:meth:`Bundler.flush_all`).

Each reading comes with an item (what the relay must settle once the bundle is
confirmed or refused); ``publish`` gets the body and the items in reading order. Pure
apart from the timer it asks for, so it is unit-tested with a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fairway.kernel.contract import BUNDLE_TAIL, bundle_body, bundle_head

T = TypeVar("T")

CAUSES = ("count", "bytes", "linger", "drain")


@dataclass(slots=True)
class OpenBundle(Generic[T]):
    """A tenant's bundle still taking readings."""

    tenant: str
    head: bytes
    parts: list[bytes] = field(default_factory=list)
    items: list[T] = field(default_factory=list)
    size: int = 0  # the body's length if flushed now

    def grown(self, part: bytes) -> int:
        """The body's length with ``part`` added."""
        return self.size + len(part) + (1 if self.parts else 0)


Publish = Callable[[str, bytes, list[T], str], None]
CallLater = Callable[[float, Callable[[], None]], Any]


class Bundler(Generic[T]):
    """Open bundles by tenant; flushed by count, bytes, linger or drain."""

    def __init__(
        self,
        max_readings: int,
        max_bytes: int,
        linger_s: float,
        publish: Publish[T],
        call_later: CallLater,
    ) -> None:
        self.max_readings, self.max_bytes, self.linger_s = max_readings, max_bytes, linger_s
        self._publish = publish
        self._call_later = call_later
        self._open: dict[str, OpenBundle[T]] = {}
        self._heads: dict[str, bytes] = {}
        self.held = 0  # readings in open bundles

    def add(self, tenant: str, part: bytes, item: T) -> None:
        """Add one reading to ``tenant``'s open bundle (opening one if needed)."""
        bundle = self._open.get(tenant)
        if bundle is not None:
            size = bundle.size + len(part) + 1  # OpenBundle.grown, inlined: per reading
            if size > self.max_bytes:
                self._flush(bundle, "bytes")
                bundle = None
        if bundle is None:
            bundle = self._start(tenant)
            size = bundle.size + len(part)
        bundle.size = size
        parts = bundle.parts
        parts.append(part)
        bundle.items.append(item)
        self.held += 1
        if len(parts) >= self.max_readings:
            self._flush(bundle, "count")
        elif size >= self.max_bytes:
            self._flush(bundle, "bytes")

    def flush_all(self, cause: str = "drain") -> None:
        """Flush every open bundle now."""
        for bundle in list(self._open.values()):
            self._flush(bundle, cause)

    def discard(self) -> None:
        """Forget every open bundle (the connection is gone: its deliveries come back)."""
        self._open.clear()
        self.held = 0

    def __len__(self) -> int:
        return len(self._open)

    def _start(self, tenant: str) -> OpenBundle[T]:
        head = self._heads.get(tenant)
        if head is None:
            head = self._heads[tenant] = bundle_head(tenant)
        bundle = self._open[tenant] = OpenBundle(tenant, head, size=len(head) + len(BUNDLE_TAIL))
        self._call_later(self.linger_s, lambda: self._expire(bundle))
        return bundle

    def _expire(self, bundle: OpenBundle[T]) -> None:
        # The timer is not cancelled when the bundle leaves earlier: it finds another one.
        if self._open.get(bundle.tenant) is bundle:
            self._flush(bundle, "linger")

    def _flush(self, bundle: OpenBundle[T], cause: str) -> None:
        del self._open[bundle.tenant]
        self.held -= len(bundle.items)
        self._publish(bundle.tenant, bundle_body(bundle.head, bundle.parts), bundle.items, cause)
