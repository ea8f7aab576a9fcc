"""The relay's partial-batch rule (ingest/relay.py) on a stub channel, no broker.

A device batch is split by verdict: its accepted readings go to its tenant's bundles
together, in one bundle (here bundles of one reading: a single reading is a publish of
its own, a batch's accepted readings one publish however many), each refused reading on
its own to ``rejected`` with its reason and index. The original is acked only once every
one of those publishes is confirmed. Rate limits and refusal budgets count readings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pika.spec import Basic

from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage.registry import Device
from ingest.relay import Relay
from tests.unit.test_relay_confirms import StubChannel


def make_relay(**overrides: Any) -> Relay:
    # Bundles of one reading, so each reading is one publish to follow; a nack refuses at
    # once (its retries are tested in test_relay_bundles).
    settings = Settings(**{"bundle_max_readings": 1, "relay_nack_retries": 0, **overrides})
    service = Relay(settings, db=None)  # type: ignore[arg-type]
    channel = StubChannel()
    service._ingest.channel = channel  # type: ignore[assignment]
    known = {"dev-1": Device("dev-1", "acme", enabled=True)}
    service.registry.lookup = lambda device, then: then(known.get(device)) or True  # type: ignore[method-assign]
    return service


@pytest.fixture
def relay() -> Iterator[Relay]:
    service = make_relay()
    yield service
    service.registry.close()


def channel(relay: Relay) -> StubChannel:
    ch = relay._ingest.channel
    assert isinstance(ch, StubChannel)
    return ch


def deliver(relay: Relay, tag: int, body: Any, device: str = "dev-1", mid: str = "b") -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    method = SimpleNamespace(delivery_tag=tag, routing_key=f"{device}.env", consumer_tag="c")
    props = SimpleNamespace(message_id=f"{mid}{tag}", user_id=None)
    relay._on_message(channel(relay), method, props, raw)  # type: ignore[arg-type]


def confirm(relay: Relay, seq: int, *, multiple: bool = False, ack: bool = True) -> None:
    kind = Basic.Ack if ack else Basic.Nack
    relay._on_confirm(SimpleNamespace(method=kind(delivery_tag=seq, multiple=multiple)))


def good(n: int, **values: Any) -> dict[str, Any]:
    return {"ts": time.time(), "values": {"n": n, **values}}


def published(relay: Relay, exchange: str) -> list[tuple[str, bytes, Any]]:
    return [(k, b, p) for e, k, b, p in channel(relay).published if e == exchange]


def test_a_batch_is_published_as_one_bundle_and_acked_after_the_last_confirm(
    relay: Relay,
) -> None:
    batch = [good(0), good(1), {"ts": time.time(), "values": {"bad": [1]}}, good(3)]
    deliver(relay, 1, batch)
    [(key, bundle, props)] = published(relay, topology.TENANTS)
    assert key == "acme" and props.headers[topology.READINGS_HEADER] == 3
    bodies = orjson.loads(bundle)["readings"]
    assert [b["values"] for b in bodies] == [{"n": 0}, {"n": 1}, {"n": 3}]
    assert [b["id"] for b in bodies] == ["b1#0", "b1#1", "b1#3"]  # message id # index
    [(key, body, props)] = published(relay, topology.REJECTED)
    assert key == "schema.dev-1"
    assert props.headers[topology.INDEX_HEADER] == 2
    assert props.headers[topology.DETAIL_HEADER].startswith("reading 2 of 4: ")
    assert props.headers[topology.TENANT_HEADER] == "acme"  # decided after the registry
    assert orjson.loads(body) == batch[2]  # the reading as sent

    confirm(relay, 1)
    assert channel(relay).acks == []  # the refusal (seq 2) still unconfirmed
    confirm(relay, 2)
    assert channel(relay).acks == [(1, True)]
    assert not relay._pending


def test_batches_and_single_readings_settle_in_delivery_order(relay: Relay) -> None:
    deliver(relay, 1, [good(0), good(1)])
    deliver(relay, 2, good(2))
    confirm(relay, 3)  # the single reading first
    assert channel(relay).acks == []
    confirm(relay, 2, multiple=True)
    assert channel(relay).acks == [(2, True)]


def test_the_device_rate_counts_readings_and_refuses_the_excess_by_index() -> None:
    relay = make_relay(device_rate=0.001, device_burst=3)
    try:
        deliver(relay, 1, [good(i) for i in range(5)])
        [(_key, bundle, _props)] = published(relay, topology.TENANTS)  # the 3 granted
        assert [r["id"] for r in orjson.loads(bundle)["readings"]] == ["b1#0", "b1#1", "b1#2"]
        refused = published(relay, topology.REJECTED)
        assert [p.headers[topology.INDEX_HEADER] for _, _, p in refused] == [3, 4]
        assert {k for k, _, _ in refused} == {"rate_limited.dev-1"}
        assert "readings/s" in refused[0][2].headers[topology.DETAIL_HEADER]
        # The bucket is empty: a single reading is refused whole, without an index.
        deliver(relay, 2, good(9))
        _key, _body, props = published(relay, topology.REJECTED)[-1]
        assert props.headers[topology.REASON_HEADER] == "rate_limited"
        assert topology.INDEX_HEADER not in props.headers
    finally:
        relay.registry.close()


def test_refusal_budgets_count_readings() -> None:
    relay = make_relay(rejected_device_rate=0.001, rejected_device_burst=5)
    try:
        # Ten bad readings, five refusals left: five kept, five counted and dropped.
        deliver(relay, 1, [{"ts": time.time(), "values": {}} for _ in range(10)])
        assert len(published(relay, topology.REJECTED)) == 5
        assert relay._acks.outstanding == 1
        confirm(relay, 5, multiple=True)
        assert channel(relay).acks == [(1, True)]
    finally:
        relay.registry.close()


def test_a_batch_refused_whole_costs_its_readings() -> None:
    relay = make_relay(rejected_device_rate=0.001, rejected_device_burst=5)
    try:
        deliver(relay, 1, [good(i) for i in range(10)], device="ghost")  # unknown device
        [(key, _body, props)] = published(relay, topology.REJECTED)
        assert key == "unknown_device.ghost" and topology.INDEX_HEADER not in props.headers
        # Ten readings' worth of refusals spent (the bucket overdrawn): the next is dropped.
        deliver(relay, 2, good(0), device="ghost")
        assert len(published(relay, topology.REJECTED)) == 1
        confirm(relay, 1)
        assert channel(relay).acks == [(2, True)]
    finally:
        relay.registry.close()


def test_a_batch_all_over_budget_is_acked_without_publishing() -> None:
    relay = make_relay(rejected_device_rate=0.001, rejected_device_burst=1)
    try:
        deliver(relay, 1, {"ts": time.time(), "values": {}})  # takes the one refusal
        deliver(relay, 2, [{"ts": time.time(), "values": {}} for _ in range(3)])
        assert len(channel(relay).published) == 1
        confirm(relay, 1)
        assert channel(relay).acks == [(2, True)]
    finally:
        relay.registry.close()


def test_a_batch_reading_its_tenant_queue_refuses_keeps_its_index(relay: Relay) -> None:
    deliver(relay, 1, [good(0), good(1)])
    confirm(relay, 1, ack=False)  # the tenant queue is full for the batch's bundle
    refused = published(relay, topology.REJECTED)
    assert [p.headers[topology.REASON_HEADER] for _, _, p in refused] == [
        "tenant_backlog_full",
        "tenant_backlog_full",
    ]
    assert [p.headers[topology.INDEX_HEADER] for _, _, p in refused] == [0, 1]
    assert [orjson.loads(b)["values"] for _, b, _ in refused] == [{"n": 0}, {"n": 1}]
    confirm(relay, 2)
    assert channel(relay).acks == []
    confirm(relay, 3)
    assert channel(relay).acks == [(1, True)]


def test_an_envelope_refusal_refuses_the_message_once(relay: Relay) -> None:
    deliver(relay, 1, {"readings": [good(0)], "ts": 1})
    [(key, _body, props)] = published(relay, topology.REJECTED)
    assert key == "schema.dev-1" and topology.INDEX_HEADER not in props.headers
    assert published(relay, topology.TENANTS) == []
