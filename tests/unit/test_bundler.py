"""Bundle assembly (ingest/bundler.py): flushed by count, bytes, linger and drain.

A fake clock stands in for the I/O loop's timers; every flushed body is decoded back
with the scheduler's own decoder, so the bundle format is checked end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from fairway.kernel.contract import Reading, bundle_part, tenant_readings
from ingest.bundler import Bundler


class Clock:
    """``call_later`` of a fake I/O loop: timers fire when the test advances time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.timers.append((self.now + delay, callback))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, callback in sorted(due, key=lambda t: t[0]):
            callback()


Flushed = list[tuple[str, bytes, list[Any], str]]


def make(
    max_readings: int = 5, max_bytes: int = 65_536, linger_s: float = 0.005
) -> tuple[Bundler[int], Clock, Flushed]:
    clock, flushed = Clock(), []
    bundler: Bundler[int] = Bundler(
        max_readings,
        max_bytes,
        linger_s,
        lambda tenant, body, items, cause: flushed.append((tenant, body, items, cause)),
        clock.call_later,
    )
    return bundler, clock, flushed


def part(n: int, pad: int = 0) -> bytes:
    values: dict[str, Any] = {"n": n}
    if pad:
        values["pad"] = "x" * pad
    return bundle_part(Reading("dev-1", "env", f"m{n}", 1_700_000_000.0 + n, values), 1.7e9)


def test_a_full_bundle_leaves_at_its_count_with_its_readings_in_order() -> None:
    bundler, _clock, flushed = make(max_readings=3)
    for n in range(7):
        bundler.add("acme", part(n), n)
    assert [(t, items, cause) for t, _, items, cause in flushed] == [
        ("acme", [0, 1, 2], "count"),
        ("acme", [3, 4, 5], "count"),
    ]
    readings = tenant_readings(flushed[1][1])
    assert [r["id"] for r in readings] == ["m3", "m4", "m5"]
    assert {r["tenant"] for r in readings} == {"acme"}
    assert bundler.held == 1 and len(bundler) == 1


def test_tenants_have_bundles_of_their_own() -> None:
    bundler, _clock, flushed = make(max_readings=2)
    for n, tenant in enumerate(["a", "b", "a", "c", "b"]):
        bundler.add(tenant, part(n), n)
    assert [(t, items) for t, _, items, _ in flushed] == [("a", [0, 2]), ("b", [1, 4])]
    assert tenant_readings(flushed[1][1])[0]["tenant"] == "b"


def test_the_byte_bound_flushes_before_a_reading_that_would_pass_it() -> None:
    size = len(part(0, pad=300))
    bundler, _clock, flushed = make(max_readings=100, max_bytes=3 * size + 40)
    for n in range(7):
        bundler.add("acme", part(n, pad=300), n)
    assert [items for _, _, items, _ in flushed] == [[0, 1, 2], [3, 4, 5]]
    assert {cause for *_, cause in flushed} == {"bytes"}
    for _, body, _, _ in flushed:
        assert len(body) <= 3 * size + 40


def test_the_body_length_is_counted_exactly() -> None:
    bundler, _clock, flushed = make(max_readings=100, max_bytes=10_000)
    parts = [part(n, pad=n * 7) for n in range(4)]
    for n, p in enumerate(parts):
        bundler.add("acme", p, n)
    size = bundler._open["acme"].size
    bundler.flush_all()
    assert len(flushed[0][1]) == size
    assert orjson.loads(flushed[0][1])["readings"][3]["values"]["pad"] == "x" * 21


def test_a_reading_larger_than_the_bound_travels_alone() -> None:
    bundler, _clock, flushed = make(max_readings=100, max_bytes=1024)
    bundler.add("acme", part(0), 0)
    bundler.add("acme", part(1, pad=2000), 1)
    bundler.add("acme", part(2), 2)
    assert [(items, cause) for _, _, items, cause in flushed] == [([0], "bytes"), ([1], "bytes")]
    assert [r["id"] for r in tenant_readings(flushed[1][1])] == ["m1"]
    assert bundler.held == 1


def test_a_bundle_that_does_not_fill_leaves_after_the_linger() -> None:
    bundler, clock, flushed = make(max_readings=10, linger_s=0.005)
    bundler.add("acme", part(0), 0)
    clock.advance(0.003)
    bundler.add("acme", part(1), 1)
    assert flushed == []
    clock.advance(0.002)  # 5 ms after the bundle's first reading, not its last
    assert [(items, cause) for _, _, items, cause in flushed] == [([0, 1], "linger")]
    assert bundler.held == 0 and len(bundler) == 0


def test_a_stale_linger_timer_does_not_cut_the_next_bundle_short() -> None:
    bundler, clock, flushed = make(max_readings=2, linger_s=0.005)
    bundler.add("acme", part(0), 0)
    bundler.add("acme", part(1), 1)  # full: leaves by count; its timer stays armed
    clock.advance(0.004)
    bundler.add("acme", part(2), 2)  # a new bundle, with a timer of its own
    clock.advance(0.001)  # the first bundle's timer fires: nothing of its own left
    assert [items for _, _, items, _ in flushed] == [[0, 1]]
    clock.advance(0.004)
    assert [(items, cause) for _, _, items, cause in flushed][-1] == ([2], "linger")


def test_a_zero_linger_flushes_on_the_next_loop_turn() -> None:
    bundler, clock, flushed = make(max_readings=10, linger_s=0.0)
    for n in range(3):
        bundler.add("acme", part(n), n)
    assert flushed == []  # same turn of the loop: still gathering
    clock.advance(0.0)
    assert [(items, cause) for _, _, items, cause in flushed] == [([0, 1, 2], "linger")]


def test_drain_flushes_every_open_bundle_and_discard_forgets_them() -> None:
    bundler, _clock, flushed = make(max_readings=10)
    bundler.add("a", part(0), 0)
    bundler.add("b", part(1), 1)
    bundler.flush_all("drain")
    assert sorted((t, cause) for t, _, _, cause in flushed) == [("a", "drain"), ("b", "drain")]
    bundler.add("a", part(2), 2)
    bundler.discard()
    assert bundler.held == 0 and len(bundler) == 0
    bundler.flush_all()
    assert len(flushed) == 2


@pytest.mark.parametrize("max_readings", [1, 2, 7])
def test_every_reading_leaves_exactly_once(max_readings: int) -> None:
    bundler, clock, flushed = make(max_readings=max_readings, max_bytes=2048)
    for n in range(50):
        bundler.add("acme" if n % 3 else "beta", part(n, pad=(n * 37) % 500), n)
        if n % 11 == 0:
            clock.advance(0.01)
    bundler.flush_all()
    items = [i for _, _, batch, _ in flushed for i in batch]
    assert sorted(items) == list(range(50))
    for tenant, body, batch, _ in flushed:
        assert len(batch) <= max_readings
        assert [r["id"] for r in tenant_readings(body)] == [f"m{i}" for i in batch]
        assert {r["tenant"] for r in tenant_readings(body)} == {tenant}
