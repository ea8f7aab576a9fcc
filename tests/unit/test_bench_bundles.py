"""The benchmarks' tenant-queue messages are the relay's: bundles the scheduler reads as
the relay's own, grouped as the relay's bundler groups readings."""

from __future__ import annotations

import time

from benchmarks import common
from fairway.kernel import topology
from fairway.kernel.contract import Reading, tenant_readings
from ingest.bundler import Bundler
from scheduler.service import readings_of


def test_a_benchmark_bundle_is_read_like_the_relays() -> None:
    now = time.time()
    readings = [Reading("d1", "env", f"m{i}", now, {"t": i}) for i in range(3)]
    body = common.bundle("acme", readings, now)
    props = common.bundle_props(len(readings))
    decoded = tenant_readings(body)
    assert [r["id"] for r in decoded] == ["m0", "m1", "m2"]
    assert {r["tenant"] for r in decoded} == {"acme"}
    assert readings_of(props) == 3 and props.delivery_mode == 2
    assert props.headers == {topology.READINGS_HEADER: 3}


def test_relay_bundles_groups_arrivals_as_the_relays_bundler_does() -> None:
    arrivals = ["a", "b", "a", "a", "b", "c", "a", "a"]
    published: list[tuple[str, int]] = []
    bundler: Bundler[int] = Bundler(
        3,
        1 << 20,
        60.0,  # no linger within the arrivals: count, then drain
        lambda tenant, _body, items, _cause: published.append((tenant, len(items))),
        lambda _delay, _fn: None,
    )
    for i, tenant in enumerate(arrivals):
        bundler.add(tenant, b"{}", i)
    bundler.flush_all()
    assert common.relay_bundles(arrivals, 3) == published
    assert published == [("a", 3), ("b", 2), ("c", 1), ("a", 2)]
