"""The refusal pace (ingest/relay.py): refusals over the budgets are acked at a pace.

A refused delivery beyond the refusal budgets is acked at once while its ingest
queue's pace has tokens; beyond, its ack is held back and released when the pace
refills, so a flooding queue's prefetch window stays full and the broker stops
delivering it. Stub channel, no broker; the I/O loop's timers are captured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from ingest import metrics
from ingest import relay as relay_module
from ingest.relay import Relay
from tests.unit.test_relay_batches import channel, confirm, make_relay

Timers = list[tuple[float, Callable[[], None]]]


def junk(relay: Relay, tag: int, queue_tag: str = "c") -> None:
    method = SimpleNamespace(delivery_tag=tag, routing_key="dev-1.env", consumer_tag=queue_tag)
    props = SimpleNamespace(message_id=f"m{tag}", user_id=None)
    relay._on_message(channel(relay), method, props, b"{not json")  # type: ignore[arg-type]


@pytest.fixture
def paced(monkeypatch: pytest.MonkeyPatch) -> tuple[Relay, Timers]:
    # One refusal kept in `rejected`, then everything over budget; the pace: 2 a second.
    relay = make_relay(rejected_device_rate=0.001, rejected_device_burst=1, relay_refused_pace=2.0)
    # The relay's clock stands still: the pace's waits are exact, not 0.5 s less the time
    # a loaded machine took between two deliveries (refilled meanwhile: 0.499, once).
    now = time.monotonic()
    monkeypatch.setattr(
        relay_module, "time", SimpleNamespace(time=time.time, monotonic=lambda: now)
    )
    timers: Timers = []
    relay.ioloop.call_later = lambda delay, fn: timers.append((delay, fn))  # type: ignore[method-assign,assignment,return-value]
    relay._queues = {"c": "ingest.evil", "d": "ingest.other"}
    return relay, timers


def test_refusals_over_budget_beyond_the_pace_are_held_then_released(
    paced: tuple[Relay, Timers],
) -> None:
    relay, timers = paced
    try:
        held_before = metrics.RELAY_REFUSED_PACED.labels("evil")._value.get()
        for tag in range(1, 6):
            junk(relay, tag)
        confirm(relay, 1)  # the one refusal kept in `rejected`
        # Tags 2 and 3 take the pace's two tokens: acked with 1. Tags 4 and 5 are held.
        assert channel(relay).acks == [(3, True)]
        assert len(relay._held) == 2
        assert [round(d, 3) for d, _ in timers] == [0.5, 1.0]
        assert metrics.RELAY_REFUSED_PACED.labels("evil")._value.get() - held_before == 2
        for _delay, release in timers:
            release()
        assert channel(relay).acks == [(3, True), (4, True), (5, True)]
        assert not relay._held
    finally:
        relay.registry.close()


def test_the_pace_is_per_ingest_queue(paced: tuple[Relay, Timers]) -> None:
    relay, timers = paced
    try:
        for tag in range(1, 5):
            junk(relay, tag)  # 1 kept, 2-3 paced at once, 4 held
        junk(relay, 5, queue_tag="d")  # another tenant's queue: its own tokens
        confirm(relay, 1)
        assert len(relay._held) == 1 and len(timers) == 1
        # Tag 5 is settled behind the held tag 4: acked on its own at once, so a held
        # refusal never holds back another queue's acks (and its prefetch window).
        assert channel(relay).acks == [(3, True), (5, False)]
        timers[0][1]()
        assert channel(relay).acks == [(3, True), (5, False), (4, True)]
    finally:
        relay.registry.close()


def test_a_release_after_a_lost_connection_does_nothing(paced: tuple[Relay, Timers]) -> None:
    relay, timers = paced
    try:
        for tag in range(1, 5):
            junk(relay, tag)
        confirm(relay, 1)
        assert len(relay._held) == 1
        relay.on_connection_lost()
        assert not relay._held
        acks = list(channel(relay).acks)
        timers[0][1]()  # the broker redelivers tag 4 on the new channel instead
        assert channel(relay).acks == acks and not relay._held
    finally:
        relay.registry.close()


def test_a_delivery_costs_one_plus_one_per_kib_of_its_body(paced: tuple[Relay, Timers]) -> None:
    relay, timers = paced
    try:
        junk(relay, 1)  # kept in `rejected`
        method = SimpleNamespace(delivery_tag=2, routing_key="dev-1.env", consumer_tag="c")
        props = SimpleNamespace(message_id="m2", user_id=None)
        relay._on_message(channel(relay), method, props, b"x" * 3072)  # type: ignore[arg-type]
        # 4 units against a bucket of 2 at 2 a second: held until 2 more have refilled.
        assert [round(d, 3) for d, _ in timers] == [1.0]
    finally:
        relay.registry.close()


def test_a_drain_acks_held_refusals_at_once(paced: tuple[Relay, Timers]) -> None:
    relay, timers = paced
    try:
        for tag in range(1, 6):
            junk(relay, tag)
        confirm(relay, 1)
        assert len(relay._held) == 2
        assert relay.drained()  # stopping: the pace no longer matters
        assert channel(relay).acks == [(3, True), (4, True), (5, True)]
        for _delay, release in timers:  # their timers come later and find nothing
            release()
        assert channel(relay).acks == [(3, True), (4, True), (5, True)]
    finally:
        relay.registry.close()


def test_only_a_devices_own_excess_counts_towards_its_quarantine() -> None:
    # Device budgets of 100, a tenant budget of 3: dev-1 spends the tenant's, then dev-2's
    # refusals are over the tenant's budget (not kept) but within its own.
    relay = make_relay(
        rejected_device_rate=0.001,
        rejected_device_burst=100,
        rejected_tenant_rate=0.001,
        rejected_tenant_burst=3,
    )
    relay._queues = {"c": "ingest.evil"}
    counted: list[tuple[str | None, int]] = []
    relay.quarantiner.refused_over_budget = (  # type: ignore[method-assign]
        lambda device, reason, units=1: counted.append((device, units))
    )

    def broken(tag: int, device: str) -> None:
        method = SimpleNamespace(delivery_tag=tag, routing_key=f"{device}.env", consumer_tag="c")
        props = SimpleNamespace(message_id=f"m{tag}", user_id=None)
        relay._on_message(channel(relay), method, props, b"{not json")  # type: ignore[arg-type]

    try:
        for tag in range(1, 4):
            broken(tag, "dev-1")
        for tag in range(4, 9):
            broken(tag, "dev-2")
        assert counted == []  # over the tenant's budget, within each device's own
        relay.refusals.devices.allow("dev-2", 0.0, 100)  # dev-2's own budget spent too
        broken(9, "dev-2")
        assert counted == [("dev-2", 1)]
    finally:
        relay.registry.close()
