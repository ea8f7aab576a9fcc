"""Bundle assembly (ingest/bundler.py): flushed by count, bytes, linger and drain; a
device batch's readings kept in one bundle.

A fake clock stands in for the I/O loop's timers; every flushed body is decoded back
with the scheduler's own decoder, so the bundle format is checked end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from fairway.kernel.contract import (
    Reading,
    bundle_body,
    bundle_head,
    bundle_part,
    parse_message,
    tenant_readings,
)
from fairway.kernel.settings import Settings, largest_single_bundle
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
    max_readings: int = 5,
    max_bytes: int = 65_536,
    linger_s: float = 0.005,
    max_body: int = 131_072,
) -> tuple[Bundler[int], Clock, Flushed]:
    clock, flushed = Clock(), []
    bundler: Bundler[int] = Bundler(
        max_readings,
        max_bytes,
        linger_s,
        lambda tenant, body, items, cause: flushed.append((tenant, body, items, cause)),
        clock.call_later,
        max_body,
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


# -- device batches -------------------------------------------------------------------


def batch(first: int, count: int, pad: int = 0) -> tuple[list[bytes], list[int]]:
    """A device batch's parts and items: readings ``first`` .. ``first + count - 1``."""
    items = list(range(first, first + count))
    return [part(n, pad) for n in items], items


def test_a_batch_that_fits_joins_the_open_bundle() -> None:
    bundler, clock, flushed = make(max_readings=10)
    bundler.add("acme", part(0), 0)
    assert bundler.add_batch("acme", *batch(1, 4)) == 1
    assert flushed == [] and bundler.held == 5
    bundler.add("acme", part(5), 5)
    clock.advance(0.005)
    assert [(items, cause) for _, _, items, cause in flushed] == [([0, 1, 2, 3, 4, 5], "linger")]
    size = len(flushed[0][1])
    assert [r["id"] for r in tenant_readings(flushed[0][1])] == [f"m{n}" for n in range(6)]
    assert size == sum(len(part(n)) for n in range(6)) + 5 + len(b'{"tenant":"acme","readings":[]}')


def test_the_open_bundle_leaves_before_a_batch_past_its_count() -> None:
    bundler, _clock, flushed = make(max_readings=5)
    bundler.add("acme", part(0), 0)
    bundler.add("acme", part(1), 1)
    bundler.add_batch("acme", *batch(2, 4))  # 2 + 4 > 5
    assert [(items, cause) for _, _, items, cause in flushed] == [([0, 1], "batch")]
    assert bundler._open["acme"].items == [2, 3, 4, 5]
    bundler.add("acme", part(6), 6)  # now full: leaves by count
    assert [(items, cause) for _, _, items, cause in flushed][-1] == ([2, 3, 4, 5, 6], "count")


def test_the_open_bundle_leaves_before_a_batch_past_its_bytes() -> None:
    size = len(part(0, pad=300))
    bundler, _clock, flushed = make(max_readings=100, max_bytes=4 * size + 60)
    bundler.add("acme", part(0, pad=300), 0)
    bundler.add("acme", part(1, pad=300), 1)
    bundler.add_batch("acme", *batch(2, 3, pad=300))  # 5 parts would pass the bytes
    assert [(items, cause) for _, _, items, cause in flushed] == [([0, 1], "batch")]
    assert bundler._open["acme"].items == [2, 3, 4]
    assert bundler._open["acme"].size == len(bundle_body(bundle_head("acme"), batch(2, 3, 300)[0]))


def test_a_batch_alone_past_the_count_is_one_bundle_flushed_at_once() -> None:
    bundler, _clock, flushed = make(max_readings=5)
    assert bundler.add_batch("acme", *batch(0, 12)) == 1
    assert [(items, cause) for _, _, items, cause in flushed] == [(list(range(12)), "count")]
    assert [r["id"] for r in tenant_readings(flushed[0][1])] == [f"m{n}" for n in range(12)]
    assert bundler.held == 0 and len(bundler) == 0


def test_a_batch_alone_past_the_bytes_is_one_bundle_flushed_at_once() -> None:
    bundler, _clock, flushed = make(max_readings=100, max_bytes=1024)
    bundler.add("acme", part(0), 0)
    bundler.add_batch("acme", *batch(1, 6, pad=300))  # ~2.6 KB: more than 1 KiB
    assert [(items, cause) for _, _, items, cause in flushed] == [
        ([0], "batch"),
        ([1, 2, 3, 4, 5, 6], "bytes"),
    ]
    assert len(flushed[1][1]) > 1024


def test_a_one_reading_batch_is_a_reading() -> None:
    bundler, _clock, flushed = make(max_readings=2)
    bundler.add("acme", part(0), 0)
    bundler.add_batch("acme", *batch(1, 1))
    assert [(items, cause) for _, _, items, cause in flushed] == [([0, 1], "count")]
    assert bundler.add_batch("acme", [], []) == 0 and bundler.held == 0


def test_a_batch_past_the_broker_limit_is_split_into_bodies_within_it() -> None:
    one = len(part(0, pad=300))
    bundler, _clock, flushed = make(max_readings=100, max_bytes=1024, max_body=4096)
    bundler.add("acme", part(99), 99)
    split = bundler.add_batch("acme", *batch(0, 30, pad=300))  # 30 x ~400 bytes
    assert flushed[0][2] == [99]
    bodies = flushed[1:]
    assert split == len(bodies) >= 3
    assert [i for _, _, items, _ in bodies for i in items] == list(range(30))
    assert {cause for *_, cause in bodies} == {"bytes"}
    for _, body, items, _ in bodies:
        assert len(body) <= 4096
        assert len(body) + one + 1 > 4096 or items[-1] == 29  # each as full as it goes
    assert bundler.held == 0 and len(bundler) == 0


@pytest.mark.parametrize(("max_readings", "max_bytes"), [(1, 2048), (5, 2048), (50, 65_536)])
def test_a_batch_is_never_split_across_bundles(max_readings: int, max_bytes: int) -> None:
    bundler, clock, flushed = make(max_readings=max_readings, max_bytes=max_bytes)
    batches: list[list[int]] = []
    n = 0
    for step in range(200):
        tenant = "acme" if step % 3 else "beta"
        count = (step * 7) % 13  # 0 .. 12: single readings and batches of all sizes
        pad = (step * 37) % 400
        if count <= 1:
            bundler.add(tenant, part(n, pad), n)
            n += 1
            continue
        parts, items = batch(n, count, pad)
        assert bundler.add_batch(tenant, parts, items) == 1
        batches.append(items)
        n += count
        if step % 17 == 0:
            clock.advance(0.01)
    bundler.flush_all()
    where = {i: k for k, (_, _, items, _) in enumerate(flushed) for i in items}
    assert sorted(where) == list(range(n))  # every reading once
    for items in batches:
        assert len({where[i] for i in items}) == 1, items
    for tenant, body, items, _ in flushed:
        assert [r["id"] for r in tenant_readings(body)] == [f"m{i}" for i in items]
        assert {r["tenant"] for r in tenant_readings(body)} == {tenant}
        # Past a bound only when the bundle is one batch alone.
        if len(items) > max_readings or len(body) > max_bytes:
            assert any(items == b for b in batches) or len(items) == 1


def test_no_single_reading_bundle_passes_the_settings_bound() -> None:
    """The worst single reading (:func:`largest_single_bundle`): a body of the largest
    size, each value a number re-serialised 14 bytes longer, an id of escaped
    characters from the AMQP property, the longest device, stream and tenant ids."""
    settings = Settings()
    device, stream, tenant = "d" * 64, "s" * 64, "t" * 64
    keys = [f"k{i}" for i in range(settings.max_values)]
    head = b'{"ts":1.79e9,"values":{' + b",".join(b'"%s":1e15' % k.encode() for k in keys) + b"}}"
    body = head + b" " * (settings.max_message_bytes - len(head))  # JSON whitespace
    message = parse_message(
        f"{device}.{stream}", body, settings, message_id='"' * settings.max_message_id, now=1.79e9
    )
    [(_, reading)] = message.readings
    bundle = bundle_body(bundle_head(tenant), [bundle_part(reading, 1_790_000_000.1234567)])
    bound = largest_single_bundle(
        settings.max_message_bytes, settings.max_values, settings.max_message_id
    )
    growth = len(bundle) - len(head)  # the padding is not kept
    assert len(bundle) <= bound
    assert growth > (bound - settings.max_message_bytes) // 2  # the bound is not loose
