"""The relay's confirm handling (ingest/relay.py) on a stub channel, no broker.

Every delivery is republished once (here in a bundle of one reading: bundles of many
are tested in ``test_relay_bundles.py``); its original is acked only once that republish
is confirmed, with one ``multiple`` ack over the settled prefix. A nacked republish
to a tenant queue is refused as ``tenant_backlog_full``, a returned one as
``unroutable``; a refusal ``rejected`` itself nacks is counted and acked.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pika.spec import Basic
from prometheus_client import REGISTRY

from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage.registry import Device
from ingest.relay import Relay


class StubChannel:
    """Records publishes and acks; confirms are sent by the test."""

    def __init__(self) -> None:
        self.is_open = True
        self.published: list[tuple[str, str, bytes, Any]] = []
        self.acks: list[tuple[int, bool]] = []

    def basic_publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Any, mandatory: bool
    ) -> None:
        assert mandatory
        self.published.append((exchange, routing_key, body, properties))

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.acks.append((delivery_tag, multiple))


@pytest.fixture
def relay() -> Any:
    # Bundles of one reading: each is published at once (bundles: test_relay_bundles.py).
    # A nack refuses at once here (its retries are tested in test_relay_bundles).
    settings = Settings(bundle_max_readings=1, relay_nack_retries=0)
    service = Relay(settings, db=None)  # type: ignore[arg-type]
    channel = StubChannel()
    service._ingest.channel = channel
    known = {"dev-1": Device("dev-1", "acme", enabled=True)}
    # The registry answers at once (its database look-ups have their own tests).
    service.registry.lookup = lambda device, then: then(known.get(device)) or True
    service.channel = channel
    yield service
    service.registry.close()


def deliver(relay: Any, tag: int, device: str = "dev-1") -> None:
    body = orjson.dumps({"ts": time.time(), "values": {"t": tag}})
    method = SimpleNamespace(delivery_tag=tag, routing_key=f"{device}.env", consumer_tag="c")
    props = SimpleNamespace(message_id=f"m{tag}", user_id=None)
    relay._on_message(relay.channel, method, props, body)


def confirm(relay: Any, seq: int, *, multiple: bool = False, ack: bool = True) -> None:
    kind = Basic.Ack if ack else Basic.Nack
    relay._on_confirm(SimpleNamespace(method=kind(delivery_tag=seq, multiple=multiple)))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def accepted(tenant: str) -> float:
    return sample("fairway_relay_accepted_total", tenant=tenant)


def test_originals_are_acked_only_after_their_republish_is_confirmed(relay: Any) -> None:
    deliver(relay, 1)
    [(exchange, key, _body, props)] = relay.channel.published
    assert (exchange, key, props.correlation_id) == (topology.TENANTS, "acme", "1")
    assert relay.channel.acks == []
    assert sample("fairway_relay_unconfirmed") == 1  # the gauge reads the relay
    confirm(relay, 1)
    assert relay.channel.acks == [(1, True)]
    assert sample("fairway_relay_unconfirmed") == 0


def test_a_streamed_multiple_confirm_settles_a_range_with_one_ack(relay: Any) -> None:
    before = accepted("acme")
    for tag in range(1, 6):
        deliver(relay, tag)
    confirm(relay, 3, multiple=True)
    assert relay.channel.acks == [(3, True)]
    confirm(relay, 5, multiple=True)
    assert relay.channel.acks == [(3, True), (5, True)]
    assert not relay._pending
    assert accepted("acme") - before == 5


def test_out_of_order_confirms_ack_only_the_settled_prefix(relay: Any) -> None:
    for tag in (1, 2, 3):
        deliver(relay, tag)
    confirm(relay, 2)
    confirm(relay, 3)
    assert relay.channel.acks == []  # delivery 1 is not settled yet
    confirm(relay, 1)
    assert relay.channel.acks == [(3, True)]


def test_a_nacked_republish_is_refused_as_tenant_backlog_full(relay: Any) -> None:
    deliver(relay, 1)
    confirm(relay, 1, ack=False)
    assert relay.channel.acks == []  # not before the refusal itself is confirmed
    exchange, key, _body, props = relay.channel.published[-1]
    assert (exchange, key) == (topology.REJECTED, "tenant_backlog_full.dev-1")
    assert props.headers[topology.REASON_HEADER] == "tenant_backlog_full"
    assert props.headers[topology.TENANT_HEADER] == "acme"
    confirm(relay, 2)
    assert relay.channel.acks == [(1, True)]


def test_a_returned_republish_is_refused_as_unroutable(relay: Any) -> None:
    deliver(relay, 1)
    relay._on_return(relay.channel, None, SimpleNamespace(correlation_id="1"), b"")
    confirm(relay, 1)  # a return always precedes the (positive) confirm
    exchange, key, _body, props = relay.channel.published[-1]
    assert (exchange, key) == (topology.REJECTED, "unroutable.dev-1")
    assert props.headers[topology.REASON_HEADER] == "unroutable"
    assert relay.channel.acks == []
    confirm(relay, 2)
    assert relay.channel.acks == [(1, True)]


def test_a_multiple_nack_refuses_the_range_and_stops_before_the_refusals(relay: Any) -> None:
    for tag in (1, 2):
        deliver(relay, tag)
    confirm(relay, 2, multiple=True, ack=False)
    refusals = [p for p in relay.channel.published if p[0] == topology.REJECTED]
    assert [p[3].correlation_id for p in refusals] == ["3", "4"]
    assert set(relay._pending) == {3, 4}  # the loop did not settle its own refusals
    confirm(relay, 4, multiple=True)
    assert relay.channel.acks == [(2, True)]


def test_a_refusal_the_rejected_queue_nacks_is_counted_and_acked(relay: Any) -> None:
    before = sample("fairway_relay_rejected_dropped_total", reason="unknown_device")
    deliver(relay, 1, device="dev-9")  # not registered
    [(exchange, key, _body, _props)] = relay.channel.published
    assert (exchange, key) == (topology.REJECTED, "unknown_device.dev-9")
    confirm(relay, 1, ack=False)
    assert sample("fairway_relay_rejected_dropped_total", reason="unknown_device") - before == 1
    assert relay.channel.acks == [(1, True)]
    assert len(relay.channel.published) == 1  # never re-published


def test_deliveries_of_a_closed_channel_are_not_admitted(relay: Any) -> None:
    relay._ingest.channel = StubChannel()  # reconnected: the old channel's deliveries are stale
    deliver(relay, 1)
    assert relay.channel.published == []
