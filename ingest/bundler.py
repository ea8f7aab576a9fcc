"""Bundle assembly: a tenant's accepted readings, gathered into one message for its queue.

The relay adds each accepted reading (already serialised, :func:`fairway.kernel.contract.
bundle_part`) to its tenant's open bundle: a single reading with :meth:`Bundler.add`, a
device batch's accepted readings together with :meth:`Bundler.add_batch`, which keeps
them in one bundle (the scheduler's sink stores a batch's readings as one document, and
a batch split across bundles would reach it in pieces). A bundle is flushed (handed to
``publish``)

* ``count``: when it holds ``max_readings`` readings (a batch alone of more readings is
  one bundle, flushed at once: a batch holds at most ``max_batch_readings``);
* ``bytes``: when its body has reached ``max_bytes``, or before a reading that would
  take it past them (so a body exceeds ``max_bytes`` only when one reading, or one
  batch, alone does: readings are never split, batches only past ``max_body``);
  also each bundle of a batch split because its readings alone would make a body over
  ``max_body`` (the broker's ``max_message_size``): rare, only for batches whose
  readings grow several-fold once serialised (:meth:`Bundler.add_batch`);
* ``batch``: before a device batch that would take it past ``max_readings`` or
  ``max_bytes`` (the bundle is not full; the batch starts the next one);
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

CAUSES = ("count", "bytes", "batch", "linger", "drain")


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
        max_body: int = 131_072,
    ) -> None:
        self.max_readings, self.max_bytes, self.linger_s = max_readings, max_bytes, linger_s
        # No body is ever larger, but a single reading's alone (settings bound those).
        self.max_body = max(max_body, max_bytes)
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

    def add_batch(self, tenant: str, parts: list[bytes], items: list[T]) -> int:
        """Add a device batch's accepted readings (``parts``, one ``items`` each, in
        order) to ``tenant``'s bundles, all in one; how many bundles they went into (1
        but for a batch split past ``max_body``).

        The open bundle is flushed first (``batch``) if the batch would take it past
        ``max_readings`` or ``max_bytes``; the batch then starts a bundle of its
        own, flushed at once if the batch alone reaches either. Only a batch whose body
        alone would exceed ``max_body`` is split, into bundles of at most that.
        """
        count = len(parts)
        if not count:
            return 0
        size = sum(map(len, parts)) + count - 1  # the parts joined by commas
        bundle = self._open.get(tenant)
        if bundle is not None:
            if (
                len(bundle.parts) + count > self.max_readings
                or bundle.size + size + 1 > self.max_bytes
            ):
                self._flush(bundle, "batch")  # not full: a batch does not fit beside it
                bundle = None
            else:
                bundle.size += size + 1
        if bundle is None:
            bundle = self._start(tenant)
            if bundle.size + size > self.max_body:
                return self._split(bundle, parts, items)
            bundle.size += size
        bundle.parts.extend(parts)
        bundle.items.extend(items)
        self.held += count
        if len(bundle.parts) >= self.max_readings:
            self._flush(bundle, "count")
        elif bundle.size >= self.max_bytes:
            self._flush(bundle, "bytes")
        return 1

    def _split(self, bundle: OpenBundle[T], parts: list[bytes], items: list[T]) -> int:
        """Put a batch too large for one body into ``bundle`` and as many more as it
        takes, each at most ``max_body`` (a single part larger goes alone), each flushed
        at once; how many."""
        bundles = 1
        for part, item in zip(parts, items, strict=True):
            if bundle.parts and bundle.grown(part) > self.max_body:
                self._flush(bundle, "bytes")
                bundle = self._start(bundle.tenant)
                bundles += 1
            bundle.size = bundle.grown(part)
            bundle.parts.append(part)
            bundle.items.append(item)
            self.held += 1
        self._flush(bundle, "bytes")
        return bundles

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
