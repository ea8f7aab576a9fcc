"""Open connections per device, from connection events and management snapshots."""

from __future__ import annotations

from monitor.service import ConnectionTracker, device_of

A, B, C = ("n", "a"), ("n", "b"), ("n", "c")


def test_a_device_stays_online_until_its_last_connection_closes() -> None:
    t = ConnectionTracker()
    assert t.opened(A, "dev-1", 0) is True
    assert t.opened(B, "dev-1", 1) is False
    assert t.opened(A, "dev-1", 2) is False  # the same connection again: no change
    assert t.closed(A, 3) is None
    assert t.online == {"dev-1"}
    assert t.closed(B, 4) == "dev-1"
    assert t.online == set()
    assert t.closed(C, 5) is None  # another vhost's connection: unknown, ignored


def test_reconcile_adds_what_the_listing_shows_and_drops_what_it_lost() -> None:
    t = ConnectionTracker()
    t.opened(A, "dev-1", 0)
    t.opened(B, "dev-2", 95)
    t.closed(C, 90)  # closed, but a lagging listing may still show it
    online, offline = t.reconcile({C: "dev-3", ("n", "d"): "dev-4"}, now=100, grace_s=30)
    assert online == {"dev-4"}  # dev-3's connection is known to be closed
    assert offline == {"dev-1"}  # A is 100 s old and not listed; B is too young to judge
    assert t.online == {"dev-2", "dev-4"}
    assert t.reconcile({("n", "d"): "dev-4", B: "dev-2"}, now=200) == (set(), set())


def test_mqtt_users_may_carry_the_vhost() -> None:
    assert device_of("t-1:dev-1", "t-1") == "dev-1"
    assert device_of("dev-1", "t-1") == "dev-1"
    assert device_of("other:dev-1", "t-1") == "other:dev-1"
