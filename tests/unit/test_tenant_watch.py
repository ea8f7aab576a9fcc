"""Versioned looks at the tenant list (fairway/domain/tenant_watch.py) on an in-memory registry."""

from __future__ import annotations

from fairway.domain.tenant_watch import TenantWatch
from fairway.storage.registry import Tenant


class Registry:
    """Records with revisions and the counter, as fairway.storage.registry keeps them."""

    def __init__(self) -> None:
        self.counter = 0
        self.records: dict[str, tuple[Tenant, int]] = {}
        self.tombstones: dict[str, int] = {}
        self.reads: list[str] = []

    def take(self) -> int:
        self.counter += 1
        return self.counter

    def write(self, tenant: Tenant, rev: int) -> None:
        self.records[tenant.id] = (tenant, rev)

    def version(self) -> int:
        self.reads.append("version")
        return self.counter

    def remove(self, tenant_id: str) -> None:
        self.tombstones[tenant_id] = self.take()
        del self.records[tenant_id]

    def changed_since(self, rev: int) -> tuple[list[Tenant], set[str]]:
        self.reads.append(f"since {rev}")
        changed = sorted((t for t, r in self.records.values() if r > rev), key=lambda t: t.id)
        removed = {
            t
            for t, r in self.tombstones.items()
            if r > rev and self.records.get(t, (None, 0))[1] < r
        }
        return changed, removed

    def all(self) -> list[Tenant]:
        self.reads.append("all")
        return sorted((t for t, _ in self.records.values()), key=lambda t: t.id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(registry: Registry, clock: Clock) -> TenantWatch:
    return TenantWatch(registry, resync_s=300.0, settle_s=10.0, clock=clock)


def test_nothing_changed_costs_one_read_of_the_counter() -> None:
    registry, clock = Registry(), Clock()
    for i in range(100):
        registry.write(Tenant(f"t{i}", 1, 10), registry.take())
    w = watch(registry, clock)
    assert len(w.poll().tenants) == 100  # first look: everything
    clock.now += 11
    w.poll()  # the startup window settles
    registry.reads.clear()
    for _ in range(10):
        clock.now += 5
        assert w.poll() is None
    assert registry.reads == ["version"] * 10


def test_a_new_tenant_and_a_weight_change_are_read_alone() -> None:
    registry, clock = Registry(), Clock()
    registry.write(Tenant("a", 1, 10), registry.take())
    w = watch(registry, clock)
    w.poll()
    clock.now += 20
    w.poll()
    registry.write(Tenant("b", 1, 10), registry.take())
    registry.write(Tenant("a", 3, 10), registry.take())
    clock.now += 5
    changes = w.poll()
    assert changes is not None and not changes.full
    assert [(t.id, t.weight) for t in changes.tenants] == [("a", 3), ("b", 1)]


def test_a_record_written_late_with_an_earlier_revision_is_not_missed() -> None:
    registry, clock = Registry(), Clock()
    w = watch(registry, clock)
    w.poll()
    clock.now += 20
    slow = registry.take()  # a writer takes its number ...
    registry.write(Tenant("fast", 1, 10), registry.take())  # ... another writes first
    clock.now += 5
    assert [t.id for t in w.poll().tenants] == ["fast"]
    registry.write(Tenant("slow", 1, 10), slow)  # ... then the first one writes
    clock.now += 2
    changes = w.poll()
    assert changes is not None and "slow" in [t.id for t in changes.tenants]
    clock.now += 20
    w.poll()
    clock.now += 5
    assert w.poll() is None  # settled: back to reading the counter only


def test_a_full_read_every_resync_finds_removed_and_unversioned_records() -> None:
    registry, clock = Registry(), Clock()
    registry.write(Tenant("a", 1, 10), registry.take())
    registry.write(Tenant("b", 1, 10), registry.take())
    w = watch(registry, clock)
    w.poll()
    del registry.records["b"]
    registry.records["old"] = (Tenant("old", 1, 10), 0)  # written without a revision
    clock.now += 301
    changes = w.poll()
    assert changes is not None and changes.full
    assert changes.removed == {"b"}
    assert "old" in [t.id for t in changes.tenants]


def test_a_counter_that_went_back_triggers_a_full_read() -> None:
    registry, clock = Registry(), Clock()
    registry.write(Tenant("a", 1, 10), registry.take())
    w = watch(registry, clock)
    w.poll()
    clock.now += 20
    w.poll()
    registry.counter = 0  # a restored database
    registry.records = {"z": (Tenant("z", 1, 10), 0)}
    clock.now += 5
    changes = w.poll()
    assert changes is not None and changes.full and changes.removed == {"a"}


def test_a_removal_is_read_from_the_changes_and_a_re_creation_wins_over_it() -> None:
    registry, clock = Registry(), Clock()
    registry.write(Tenant("a", 1, 10), registry.take())
    registry.write(Tenant("b", 1, 10), registry.take())
    w = watch(registry, clock)
    w.poll()
    clock.now += 20
    w.poll()
    registry.remove("b")
    clock.now += 5
    changes = w.poll()
    assert changes is not None and not changes.full
    assert changes.removed == {"b"} and changes.tenants == []
    assert w.known == {"a"}
    registry.remove("a")
    registry.write(Tenant("a", 2, 10), registry.take())  # created again in the same window
    clock.now += 5
    changes = w.poll()
    assert changes is not None and not changes.full
    assert "a" not in changes.removed  # ("b" again: changes of the last settle_s are re-read)
    assert [(t.id, t.weight) for t in changes.tenants] == [("a", 2)]
    assert w.known == {"a"}
