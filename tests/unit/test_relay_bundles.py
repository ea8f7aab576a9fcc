"""The relay's bundles (ingest/relay.py) on a stub channel, no broker.

A tenant's accepted readings, from many deliveries, go to its queue as one message;
each original delivery is acked only once every bundle holding its readings is
confirmed. A bundle the tenant queue refuses (full: nack; missing: return) puts each of
its readings in ``rejected`` on its own with the reason, the way a reading published
alone was refused before bundles.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from fairway.kernel import topology
from fairway.kernel.contract import tenant_readings
from fairway.storage.registry import Device
from ingest.relay import Relay
from tests.unit.test_relay_batches import channel, confirm, deliver, good, make_relay, published


@pytest.fixture
def relay() -> Iterator[Relay]:
    service = make_relay(bundle_max_readings=4, bundle_linger_ms=5.0)
    yield service
    service.registry.close()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def bundles(relay: Relay) -> list[tuple[list[dict[str, Any]], Any]]:
    return [(tenant_readings(b), p) for _, b, p in published(relay, topology.TENANTS)]


def test_readings_of_many_deliveries_travel_in_one_bundle(relay: Relay) -> None:
    for tag in (1, 2, 3):
        deliver(relay, tag, good(tag))
    assert bundles(relay) == []  # the bundle is open: 3 of 4 readings
    deliver(relay, 4, good(4))
    [(readings, props)] = bundles(relay)
    assert [r["values"]["n"] for r in readings] == [1, 2, 3, 4]
    assert [r["id"] for r in readings] == ["b1", "b2", "b3", "b4"]  # ids per reading
    assert props.headers[topology.READINGS_HEADER] == 4
    assert channel(relay).acks == []
    confirm(relay, 1)
    assert channel(relay).acks == [(4, True)]  # one confirm settles four deliveries


def test_a_batch_that_does_not_fit_closes_the_open_bundle_and_travels_whole(
    relay: Relay,
) -> None:
    before = sample("fairway_relay_bundle_flushes_total", cause="count")
    before_batch = sample("fairway_relay_bundle_flushes_total", cause="batch")
    deliver(relay, 1, good(0))
    deliver(relay, 2, [good(1), good(2), good(3), good(4), good(5)])  # 5: more than 4
    [(first, _), (second, props)] = bundles(relay)
    assert [r["values"]["n"] for r in first] == [0]  # flushed before the batch
    assert [r["values"]["n"] for r in second] == [1, 2, 3, 4, 5]  # one bundle, at once
    assert props.headers[topology.READINGS_HEADER] == 5
    # the open bundle left for the batch (not full), the batch's own by its count
    assert sample("fairway_relay_bundle_flushes_total", cause="batch") == before_batch + 1
    assert sample("fairway_relay_bundle_flushes_total", cause="count") == before + 1
    confirm(relay, 1)
    assert channel(relay).acks == [(1, True)]
    confirm(relay, 2)
    assert channel(relay).acks == [(1, True), (2, True)]
    assert not relay._pending


def test_a_batch_that_fits_joins_the_open_bundle(relay: Relay) -> None:
    deliver(relay, 1, good(0))
    deliver(relay, 2, [good(1), good(2), good(3)])
    [(readings, _)] = bundles(relay)
    assert [r["values"]["n"] for r in readings] == [0, 1, 2, 3]


def test_the_granted_part_of_a_rate_limited_batch_is_one_bundle() -> None:
    relay = make_relay(bundle_max_readings=4, device_rate=0.001, device_burst=5)
    try:
        deliver(relay, 1, good(0))
        deliver(relay, 2, good(1))
        deliver(relay, 3, [good(i) for i in range(2, 7)])  # 3 granted: 2 + 3 > 4
        [(first, _)] = bundles(relay)
        assert [r["values"]["n"] for r in first] == [0, 1]
        relay.bundler.flush_all("linger")  # what the linger timer does 5 ms later
        second, _ = bundles(relay)[1]
        assert [r["id"] for r in second] == ["b3#0", "b3#1", "b3#2"]
        refused = published(relay, topology.REJECTED)
        assert [p.headers[topology.INDEX_HEADER] for _, _, p in refused] == [3, 4]
        for seq in range(1, 5):
            confirm(relay, seq)
        assert channel(relay).acks == [(2, True), (3, True)]
    finally:
        relay.registry.close()


def test_the_linger_timer_publishes_a_bundle_that_does_not_fill() -> None:
    relay = make_relay(bundle_max_readings=100, bundle_linger_ms=1.0)
    try:
        deliver(relay, 1, good(1))
        assert bundles(relay) == []
        started = time.monotonic()
        relay.ioloop.call_later(0.2, relay.ioloop.stop)
        relay.ioloop.start()  # pika's own loop runs the bundle's timer
        [(readings, _props)] = bundles(relay)
        assert time.monotonic() - started >= 0.001
        assert [r["values"]["n"] for r in readings] == [1]
    finally:
        relay.registry.close()


def test_a_nacked_bundle_is_published_again_and_settles_when_taken() -> None:
    relay = make_relay(bundle_max_readings=4, relay_nack_retries=2, relay_nack_retry_s=0.01)
    try:
        for tag in range(1, 5):
            deliver(relay, tag, good(tag))
        confirm(relay, 1, ack=False)  # a quorum queue whose leader was just lost, say
        assert published(relay, topology.REJECTED) == [] and channel(relay).acks == []
        relay.ioloop.call_later(0.1, relay.ioloop.stop)
        relay.ioloop.start()  # the retry's timer
        first, again = published(relay, topology.TENANTS)
        assert again[1] == first[1]  # the same bundle, readings and ids
        confirm(relay, 2)
        assert channel(relay).acks == [(4, True)]
        assert published(relay, topology.REJECTED) == []
    finally:
        relay.registry.close()


def test_a_queue_still_nacking_after_the_retries_is_full() -> None:
    relay = make_relay(bundle_max_readings=4, relay_nack_retries=1, relay_nack_retry_s=0.01)
    try:
        for tag in range(1, 5):
            deliver(relay, tag, good(tag))
        confirm(relay, 1, ack=False)
        relay.ioloop.call_later(0.1, relay.ioloop.stop)
        relay.ioloop.start()
        confirm(relay, 2, ack=False)  # refused again: the queue is full
        refusals = published(relay, topology.REJECTED)
        assert [p.headers[topology.REASON_HEADER] for _, _, p in refusals] == [
            "tenant_backlog_full"
        ] * 4
    finally:
        relay.registry.close()


def test_a_retry_is_dropped_when_the_connection_was_lost_meanwhile() -> None:
    relay = make_relay(bundle_max_readings=4, relay_nack_retries=2, relay_nack_retry_s=0.01)
    try:
        for tag in range(1, 5):
            deliver(relay, tag, good(tag))
        confirm(relay, 1, ack=False)
        assert not relay.drained()  # a retry is owed: not drained yet
        relay.on_connection_lost()  # the originals go back to ingest with the channel
        relay.ioloop.call_later(0.1, relay.ioloop.stop)
        relay.ioloop.start()
        assert len(published(relay, topology.TENANTS)) == 1  # not published again
    finally:
        relay.registry.close()


def test_a_bundle_the_full_queue_refuses_puts_each_reading_in_rejected() -> None:
    relay = make_relay(bundle_max_readings=4, bundle_linger_ms=5.0, relay_nack_retries=0)
    try:
        refused_at_once(relay)
    finally:
        relay.registry.close()


def refused_at_once(relay: Relay) -> None:
    before = sample("fairway_relay_rejected_total", reason="tenant_backlog_full")
    single = orjson.dumps(good(0))
    deliver(relay, 1, single)
    deliver(relay, 2, [good(1), good(2), good(3)])
    confirm(relay, 1, ack=False)  # the tenant queue is full: reject-publish nacks the bundle
    refusals = published(relay, topology.REJECTED)
    assert [p.headers[topology.REASON_HEADER] for _, _, p in refusals] == [
        "tenant_backlog_full"
    ] * 4
    assert [p.headers.get(topology.INDEX_HEADER) for _, _, p in refusals] == [None, 0, 1, 2]
    assert refusals[0][1] == single  # a single reading: its original body
    # A batch's reading: the tenant message of the format before bundles (replayable).
    kept = orjson.loads(refusals[2][1])
    assert (kept["tenant"], kept["values"], kept["id"]) == ("acme", {"n": 2}, "b2#1")
    assert channel(relay).acks == []  # not before the refusals are confirmed
    confirm(relay, 5, multiple=True)
    assert channel(relay).acks == [(2, True)]
    assert sample("fairway_relay_rejected_total", reason="tenant_backlog_full") - before == 4


def test_a_returned_bundle_is_refused_reading_by_reading_as_unroutable(relay: Relay) -> None:
    for tag in range(1, 5):
        deliver(relay, tag, good(tag))
    relay._on_return(channel(relay), None, type("P", (), {"correlation_id": "1"})(), b"")
    confirm(relay, 1)
    refusals = published(relay, topology.REJECTED)
    assert {p.headers[topology.REASON_HEADER] for _, _, p in refusals} == {"unroutable"}
    assert len(refusals) == 4
    confirm(relay, 5, multiple=True)
    assert channel(relay).acks == [(4, True)]


def test_bundles_are_per_tenant(relay: Relay) -> None:
    relay.registry.lookup = lambda device, then: then(  # type: ignore[method-assign]
        {"dev-1": Device("dev-1", "acme", True), "dev-2": Device("dev-2", "beta", True)}[device]
    )
    for tag in range(1, 9):
        deliver(relay, tag, good(tag), device="dev-1" if tag % 2 else "dev-2")
    keys = [k for k, _, _ in published(relay, topology.TENANTS)]
    assert keys == ["acme", "beta"]
    (acme, _), (beta, _) = bundles(relay)
    assert {r["tenant"] for r in acme} == {"acme"} and {r["tenant"] for r in beta} == {"beta"}
    assert {r["device"] for r in beta} == {"dev-2"}


def test_the_drain_publishes_open_bundles_and_waits_for_their_confirms(relay: Relay) -> None:
    deliver(relay, 1, good(1))
    assert not relay.drained()  # flushed now, but unconfirmed
    assert len(bundles(relay)) == 1
    assert sample("fairway_relay_bundle_flushes_total", cause="drain") >= 1
    confirm(relay, 1)
    assert relay.drained()
    assert channel(relay).acks == [(1, True)]


def test_a_lost_connection_forgets_open_bundles(relay: Relay) -> None:
    deliver(relay, 1, good(1))
    assert sample("fairway_relay_bundled_readings") == 1
    relay.on_connection_lost()
    assert sample("fairway_relay_bundled_readings") == 0
    relay.bundler.flush_all()
    assert bundles(relay) == []  # its delivery is redelivered by the broker


def test_bundle_metrics_count_readings_and_causes(relay: Relay) -> None:
    count_before = sample("fairway_relay_bundle_flushes_total", cause="count")
    sum_before = sample("fairway_relay_bundle_readings_sum")
    for tag in range(1, 9):
        deliver(relay, tag, good(tag))
    assert sample("fairway_relay_bundle_flushes_total", cause="count") - count_before == 2
    assert sample("fairway_relay_bundle_readings_sum") - sum_before == 8
