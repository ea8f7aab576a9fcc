"""What changed in the tenant list since the last look, without re-reading all of it.

Shared by the scheduler (consumers, weights, removals) and the relay (which tenant
ingest queues to consume).

Every write of a tenant record takes the next number of one counter
(:func:`fairway.storage.registry.next_tenants_rev`) and stamps it on the record as
``rev``. A look (every ``tenant_refresh_s``) reads the counter, one document by
``_id``; only when it moved does it ask for the records with a ``rev`` above what is
already known, so with nothing changing a look costs one small read whatever the
number of tenants.

Writers take a number and then write, so for a moment a number can be taken and its
record not yet visible; a record written later with a smaller number than one already
seen must not be missed. So the watch trusts a number only once it was seen at least
``settle_s`` ago (a writer writes its record within milliseconds of taking it): until
then the changed-since query keeps starting below it, and records changed in the last
``settle_s`` are read again (idempotent). A removal takes a number too and leaves a
tombstone (:func:`fairway.storage.registry.remove_tenant`), so it is found the same
way. A full read every ``resync_s`` (and the first look) catches what no counter can:
records written without a ``rev`` (older versions, hand edits), records deleted by
hand, and a writer stalled for longer than ``settle_s``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fairway.storage import registry
from fairway.storage.registry import Tenant

WRITE_SETTLE_S = 10.0


class TenantSource(Protocol):
    """The three reads of the tenant registry the watch needs."""

    def version(self) -> int:
        """The last revision taken."""

    def changed_since(self, rev: int) -> tuple[list[Tenant], set[str]]:
        """Tenants whose record carries a revision above ``rev``, and ids removed since."""

    def all(self) -> list[Tenant]:
        """Every tenant."""


@dataclass
class TenantChanges:
    """One look's result: new or changed tenants (all of them on a full read)."""

    tenants: list[Tenant]
    full: bool = False
    # Removed since the last look: a tombstone, or known and absent from a full read.
    removed: set[str] = field(default_factory=set)


class TenantWatch:
    """Versioned looks at the tenant list (runs on one worker thread at a time)."""

    def __init__(
        self,
        source: TenantSource,
        resync_s: float,
        settle_s: float = WRITE_SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.resync_s, self.settle_s, self.clock = resync_s, settle_s, clock
        self.known: set[str] = set()
        self.full_reads = self.change_reads = 0
        self._confirmed = 0  # every record with a rev up to this has been read
        self._marks: deque[tuple[float, int]] = deque()  # (when seen, counter value)
        self._last_full: float | None = None

    def _safe(self, now: float) -> int:
        """The highest counter value seen at least ``settle_s`` ago (its records are written)."""
        safe = self._confirmed
        for seen, version in self._marks:
            if seen > now - self.settle_s:
                break
            safe = max(safe, version)
        return safe

    def poll(self) -> TenantChanges | None:
        """Look once: the changes since the last look, or None when nothing changed.

        Raises what the database raises; the state is then as before the look.
        """
        now = self.clock()
        version = self.source.version()
        if version < self._confirmed:  # the counter went back (a restored database)
            self._confirmed, self._last_full = 0, None
            self._marks.clear()
        if not self._marks or self._marks[-1][1] != version:
            self._marks.append((now, version))
        safe = self._safe(now)
        if self._last_full is None or now - self._last_full >= self.resync_s:
            tenants = self.source.all()
            self.full_reads += 1
            listed = {t.id for t in tenants}
            changes = TenantChanges(tenants, full=True, removed=self.known - listed)
            self.known, self._last_full = listed, now
        elif version > self._confirmed:
            tenants, removed = self.source.changed_since(self._confirmed)
            self.change_reads += 1
            self.known.update(t.id for t in tenants)
            self.known.difference_update(removed)
            changes = TenantChanges(tenants, removed=removed)
        else:
            return None
        self._confirmed = safe
        while len(self._marks) > 1 and self._marks[0][1] <= safe:
            self._marks.popleft()
        return changes


class ListedTenants:
    """A :class:`TenantSource` over a plain listing: every look reads the whole list."""

    def __init__(self, list_tenants: Callable[[], list[Tenant]]) -> None:
        self._list, self._looks = list_tenants, 0

    def version(self) -> int:
        """A new version at every look."""
        self._looks += 1
        return self._looks

    def changed_since(self, rev: int) -> tuple[list[Tenant], set[str]]:
        """Everything (removals show at full reads only)."""
        return self._list(), set()

    def all(self) -> list[Tenant]:
        """Everything."""
        return self._list()


class RegistryTenants:
    """The tenant registry as a :class:`TenantSource` (versioned changes)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def version(self) -> int:
        """The last tenant revision taken."""
        return registry.tenants_version(self.db)

    def changed_since(self, rev: int) -> tuple[list[Tenant], set[str]]:
        """Tenants written with a revision above ``rev``, and those removed since."""
        return registry.tenants_changed_since(self.db, rev)

    def all(self) -> list[Tenant]:
        """Every tenant."""
        return registry.list_tenants(self.db)
