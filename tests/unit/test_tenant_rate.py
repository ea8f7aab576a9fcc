"""The tenant plan's accepted-reading rate: its bucket (ingest/ratelimit.py TenantRates)
and the relay's refusal rule (``tenant_rate_limited``) on a stub channel, no broker."""

from __future__ import annotations

import time
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from fairway.kernel import topology
from fairway.kernel.contract import parse_message
from fairway.storage.registry import Device, check_plan
from ingest import relay as relay_module
from ingest.ratelimit import TenantRates
from ingest.relay import Relay
from tests.unit.test_relay_batches import channel, confirm, deliver, good, make_relay, published
from tests.unit.test_relay_confirms import StubChannel


def test_unlimited_by_default_takes_everything_and_keeps_no_bucket() -> None:
    rates = TenantRates(0.0, 0.0, min_burst=100, max_keys=10)
    assert rates.take("acme", 0.0, 1_000_000) == 1_000_000
    assert not rates._buckets


def test_a_tenant_gets_its_burst_then_its_rate() -> None:
    rates = TenantRates(0.0, 0.0, min_burst=10, max_keys=10)
    rates.plan("acme", 100.0, 50.0)
    assert rates.take("acme", 0.0, 80) == 50  # the burst
    assert rates.take("acme", 0.0, 1) == 0
    assert rates.take("acme", 0.1, 80) == 10  # 0.1 s of 100/s
    assert rates.take("acme", 10.0, 80) == 50  # refilled up to the burst, never beyond
    assert rates.take("other", 0.0, 10**6) == 10**6  # no plan, default unlimited


def test_an_earlier_arrival_never_takes_back_what_later_ones_refilled() -> None:
    """A delivery released from a registry look-up is gated and charged at its arrival,
    which may precede what later arrivals of the same tenant already took: the bucket
    never looks back in time (it went negative, refusing a tenant far below its plan)."""
    rates = TenantRates(0.0, 0.0, min_burst=1, max_keys=10)
    rates.plan("acme", 10.0, 20.0)
    assert rates.take("acme", 1000.0, 1) == 1  # a parked device's reading arrives at 1000 s
    assert rates.take("acme", 1005.0, 1) == 1  # a cached device's reading at 1005 s
    assert not rates.gate_closed("acme", 1000.0)  # released: 2 readings in 5 s at 10/s
    assert rates.take("acme", 1000.0, 1) == 1
    assert rates.take("acme", 1000.0, 18) == 18  # what is left, not a refill for 1000 s
    assert rates.take("acme", 1000.0, 1) == 0


def test_an_unset_burst_is_two_seconds_of_the_rate_at_least_a_full_batch() -> None:
    rates = TenantRates(0.0, 0.0, min_burst=100, max_keys=10)
    rates.plan("fast", 500.0, None)
    rates.plan("slow", 1.0, None)
    assert rates.take("fast", 0.0, 10_000) == 1000
    assert rates.take("slow", 0.0, 10_000) == 100


def test_the_default_plan_applies_to_tenants_without_their_own() -> None:
    rates = TenantRates(10.0, 20.0, min_burst=1, max_keys=10)
    assert rates.take("acme", 0.0, 100) == 20
    rates.plan("free", 0.0, None)  # its own rate 0: unlimited despite the default
    assert rates.take("free", 0.0, 100) == 100
    rates.plan("burst", None, 5.0)  # only its own burst: the default rate
    assert rates.take("burst", 0.0, 100) == 5
    assert rates.rate_of("burst") == 10.0


def test_a_changed_plan_restarts_its_bucket_an_unchanged_one_keeps_it() -> None:
    rates = TenantRates(0.0, 0.0, min_burst=1, max_keys=10)
    rates.plan("acme", 1.0, 10.0)
    assert rates.take("acme", 0.0, 10) == 10
    rates.plan("acme", 1.0, 10.0)  # the same plan read again: still empty
    assert rates.take("acme", 0.0, 10) == 0
    rates.plan("acme", 2.0, 10.0)
    assert rates.take("acme", 0.0, 10) == 10
    rates.plan("acme", None, None)  # back to the default: unlimited
    assert rates.take("acme", 0.0, 10**6) == 10**6
    rates.plan("gone", 1.0, 1.0)
    rates.take("gone", 0.0, 1)
    rates.forget("gone")
    assert rates.take("gone", 0.0, 5) == 5


def test_an_unlimited_plan_keeps_no_bucket_so_its_gate_is_never_closed() -> None:
    """The relay skips the gate for a tenant at rate 0 (ingest/relay.py _on_message): a
    bucket exists only while a tenant's plan limits it."""
    rates = TenantRates(0.0, 0.0, min_burst=1, max_keys=10)
    rates.plan("acme", 1.0, 5.0)
    assert rates.take("acme", 0.0, 10) == 5
    assert rates.gate_closed("acme", 0.0)  # dry
    for rate, burst in ((0.0, 5.0), (None, None)):  # its own rate 0, then the default's 0
        rates.plan("acme", 1.0, 5.0)
        rates.take("acme", 0.0, 10)
        rates.plan("acme", rate, burst)
        assert rates.rate_of("acme") == 0
        assert "acme" not in rates._buckets and not rates.gate_closed("acme", 0.0)
        assert rates.take("acme", 0.0, 10**6) == 10**6
        assert "acme" not in rates._buckets


def test_buckets_are_bounded() -> None:
    rates = TenantRates(1.0, 1.0, min_burst=1, max_keys=3)
    for i in range(10):
        rates.take(f"t{i}", 0.0, 1)
    assert len(rates._buckets) == 3


@pytest.mark.parametrize(
    ("rate", "burst"),
    [
        (-1, None),
        (float("inf"), None),
        (float("nan"), None),
        (1e9, None),
        (1, 0),
        (None, 0.5),
        (True, None),
        ("5", None),
    ],
)
def test_a_bad_plan_is_refused(rate: object, burst: object) -> None:
    with pytest.raises(ValueError):
        check_plan(rate, burst)  # type: ignore[arg-type]


def test_good_plans_pass() -> None:
    check_plan(None, None)
    check_plan(0, None)
    check_plan(250.5, 1000)


def over_plan(tenant: str) -> float:
    value = REGISTRY.get_sample_value("fairway_relay_tenant_rate_limited_total", {"tenant": tenant})
    return value or 0.0


def accepted(relay: Relay) -> int:
    """Readings published to the tenant queues (a batch's accepted readings: one bundle)."""
    return sum(
        p.headers[topology.READINGS_HEADER] for _, _, p in published(relay, topology.TENANTS)
    )


def make(**overrides: object) -> Relay:
    relay = make_relay(**overrides)
    known = {
        "dev-1": Device("dev-1", "acme", enabled=True),
        "dev-2": Device("dev-2", "acme", enabled=True),
        "dev-3": Device("dev-3", "zeta", enabled=True),
    }
    relay.registry.lookup = lambda device, then: then(known.get(device)) or True  # type: ignore[method-assign]
    # A limited tenant's deliveries wait unread for the answer (always at once here).
    relay.registry.wait = lambda device, then: then(known.get(device))  # type: ignore[method-assign]
    return relay


def test_readings_beyond_the_tenant_plan_are_refused_by_index_and_counted() -> None:
    relay = make()
    relay.tenant_rates.plan("acme", 0.001, 4.0)
    before = over_plan("acme")
    try:
        deliver(relay, 1, [good(i) for i in range(3)], device="dev-1")
        deliver(relay, 2, [good(i) for i in range(3)], device="dev-2")  # the same tenant's
        assert accepted(relay) == 4
        refused = published(relay, topology.REJECTED)
        assert [p.headers[topology.INDEX_HEADER] for _, _, p in refused] == [1, 2]
        assert {k for k, _, _ in refused} == {"tenant_rate_limited.dev-2"}
        assert (
            "tenant 'acme' exceeds its 0.001 readings/s"
            in refused[0][2].headers[topology.DETAIL_HEADER]
        )
        assert refused[0][2].headers[topology.TENANT_HEADER] == "acme"
        # The bucket is empty: a single reading is refused whole, without an index.
        deliver(relay, 3, good(9), device="dev-1")
        _key, _body, props = published(relay, topology.REJECTED)[-1]
        assert props.headers[topology.REASON_HEADER] == "tenant_rate_limited"
        assert topology.INDEX_HEADER not in props.headers
        assert over_plan("acme") - before == 3
        # Another tenant is not touched.
        deliver(relay, 4, [good(i) for i in range(50)], device="dev-3")
        assert accepted(relay) == 4 + 50
    finally:
        relay.registry.close()


def test_the_device_rate_applies_first_and_tenant_refusals_give_the_device_its_tokens() -> None:
    relay = make(device_rate=0.001, device_burst=5)
    relay.tenant_rates.plan("acme", 0.001, 3.0)
    try:
        deliver(relay, 1, [good(i) for i in range(7)])
        refused = published(relay, topology.REJECTED)
        reasons = [
            (p.headers[topology.INDEX_HEADER], p.headers[topology.REASON_HEADER])
            for _, _, p in refused
        ]
        # 0-2 accepted; 3-4 within the device's rate but beyond the tenant's; 5-6 beyond
        # the device's own.
        assert reasons == [
            (3, "tenant_rate_limited"),
            (4, "tenant_rate_limited"),
            (5, "rate_limited"),
            (6, "rate_limited"),
        ]
        # Readings refused for the tenant's plan did not spend the device's tokens.
        assert relay.rate.peek("dev-1", time.time()) >= 2.0 - 0.01
    finally:
        relay.registry.close()


def test_plans_follow_the_tenant_watch() -> None:
    relay = make()
    try:
        relay._apply_plans([("acme", 0.001, 2.0), ("zeta", None, None)], set())
        deliver(relay, 1, [good(i) for i in range(5)], device="dev-1")
        assert accepted(relay) == 2
        relay._apply_plans([("acme", None, None)], set())  # back to the default (unlimited)
        deliver(relay, 2, [good(i) for i in range(5)], device="dev-1")
        assert accepted(relay) == 7
    finally:
        relay.registry.close()


def test_the_default_plan_comes_from_the_settings() -> None:
    relay = make(tenant_rate=0.001, tenant_burst=2.0)
    try:
        deliver(relay, 1, [good(i) for i in range(5)], device="dev-3")
        assert accepted(relay) == 2
    finally:
        relay.registry.close()


def test_refusals_beyond_the_budgets_are_counted_together_and_settle_the_delivery() -> None:
    relay = make(
        rejected_device_rate=0.001,
        rejected_device_burst=1000,
        rejected_tenant_rate=0.001,
        rejected_tenant_burst=3,
        device_rate=0.001,
        device_burst=12,
    )
    relay.tenant_rates.plan("acme", 0.001, 2.0)
    over = (
        REGISTRY.get_sample_value(
            "fairway_relay_rejected_over_budget_total",
            {"tenant": "acme", "reason": "tenant_rate_limited"},
        )
        or 0.0
    )
    planned = over_plan("acme")
    try:
        deliver(relay, 1, [good(i) for i in range(20)], device="dev-1")
        assert accepted(relay) == 2
        kept = published(relay, topology.REJECTED)
        # The tenant's refusal budget keeps three (by index); the other 15 refused
        # readings (7 beyond the plan, 8 beyond the device's rate) are counted.
        assert [
            (p.headers[topology.INDEX_HEADER], p.headers[topology.REASON_HEADER])
            for _, _, p in kept
        ] == [(2, "tenant_rate_limited"), (3, "tenant_rate_limited"), (4, "tenant_rate_limited")]
        after = REGISTRY.get_sample_value(
            "fairway_relay_rejected_over_budget_total",
            {"tenant": "acme", "reason": "tenant_rate_limited"},
        )
        assert after - over == 7
        assert over_plan("acme") - planned == 10  # the registry is process-wide
        assert channel(relay).acks == []
        for seq in range(1, 6):
            confirm(relay, seq)
        assert channel(relay).acks == [(1, True)]  # acked once, when all five confirmed
    finally:
        relay.registry.close()


def test_a_plan_burst_below_a_full_batch_is_warned_about_once_and_only_if_it_limits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = make()
    try:
        with caplog.at_level("WARNING", logger="ingest.relay"):
            relay._apply_plans([("acme", 5.0, 10.0)], set())
            relay._apply_plans([("acme", 5.0, 10.0)], set())  # a later full read: unchanged
            relay._apply_plans([("zeta", 0.0, 10.0)], set())  # unlimited: the burst does nothing
        warned = [r for r in caplog.records if "max_burst" in r.getMessage()]
        assert [r.__dict__["tenant"] for r in warned] == ["acme"]
    finally:
        relay.registry.close()


# -- refused before the body is read -------------------------------------------------------
def from_queue(
    relay: Relay,
    tag: int,
    body: object,
    device: str = "dev-1",
    tenant: str = "acme",
    *,
    key: str | None = None,
    user_id: str | None = None,
) -> None:
    """Deliver ``body`` as it comes from ``ingest.<tenant>`` (the tenant's own queue)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    relay._queues[f"c-{tenant}"] = topology.INGEST_QUEUE_PREFIX + tenant
    method = SimpleNamespace(
        delivery_tag=tag, routing_key=key or f"{device}.env", consumer_tag=f"c-{tenant}"
    )
    props = SimpleNamespace(message_id=f"m{tag}", user_id=user_id)
    relay._on_message(channel(relay), method, props, raw)  # type: ignore[arg-type]


def unread(tenant: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "fairway_relay_refused_unread_total", {"tenant": tenant, "reason": reason}
    )
    return value or 0.0


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every routing key the body decoder is called for."""
    calls: list[str] = []

    def counting(routing_key: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(routing_key)
        return parse_message(routing_key, *args, **kwargs)

    monkeypatch.setattr(relay_module, "parse_message", counting)
    return calls


def test_an_over_plan_message_is_refused_before_its_body_is_read(reads: list[str]) -> None:
    relay = make()
    relay.tenant_rates.plan("acme", 0.001, 4.0)  # none left after four: closed
    before, unread_before = over_plan("acme"), unread("acme", "tenant_rate_limited")
    try:
        from_queue(relay, 1, [good(i) for i in range(4)])
        assert accepted(relay) == 4
        assert len(reads) == 1
        # The bucket is empty: an invalid body is refused as over plan, not read.
        from_queue(relay, 2, b"{not json")
        assert len(reads) == 1
        [(key, body, props)] = published(relay, topology.REJECTED)
        assert key == "tenant_rate_limited.dev-1"
        assert body == b"{not json"  # the message as sent
        assert props.headers[topology.REASON_HEADER] == "tenant_rate_limited"
        assert props.headers[topology.TENANT_HEADER] == "acme"
        assert props.headers[topology.DEVICE_HEADER] == "dev-1"
        assert topology.INDEX_HEADER not in props.headers
        # One message, counted as one reading.
        assert over_plan("acme") - before == 1
        assert unread("acme", "tenant_rate_limited") - unread_before == 1
        for seq in range(1, 6):
            confirm(relay, seq)
        assert channel(relay).acks[-1] == (2, True)  # acked once its refusal is confirmed
        # Another tenant's device is read and accepted.
        from_queue(relay, 3, [good(i) for i in range(3)], device="dev-3", tenant="zeta")
        assert len(reads) == 2
        assert accepted(relay) == 7
    finally:
        relay.registry.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The relay's wall clock, moved by hand: ``clock[0]`` (readings' own times stay real)."""
    now = [time.time()]
    fake = SimpleNamespace(time=lambda: now[0], monotonic=time.monotonic)
    monkeypatch.setattr(relay_module, "time", fake)
    return now


def test_a_dry_plan_is_read_again_only_at_its_opening_level(
    reads: list[str], clock: list[float]
) -> None:
    relay = make(max_batch_readings=100)
    # The opening level: a full batch (100), at most the burst (150), at most one second
    # of the rate (50): 50 tokens.
    relay.tenant_rates.plan("acme", 50.0, 150.0)
    try:
        from_queue(relay, 1, [good(i) for i in range(100)])
        from_queue(relay, 2, [good(i) for i in range(60)])  # 50 accepted, 10 by index: dry
        assert accepted(relay) == 150
        assert len(published(relay, topology.REJECTED)) == 10
        # Half a second later, 25 tokens: below the opening level, refused whole and
        # unread (the plain bucket would have read the ten and accepted them).
        clock[0] += 0.5
        from_queue(relay, 3, [good(i) for i in range(10)])
        assert len(reads) == 2
        assert accepted(relay) == 150
        _key, _body, props = published(relay, topology.REJECTED)[-1]
        assert props.headers[topology.REASON_HEADER] == "tenant_rate_limited"
        assert topology.INDEX_HEADER not in props.headers
        # A second after running dry, 50: one message is read, and accepted whole.
        clock[0] += 0.5
        from_queue(relay, 4, [good(i) for i in range(10)])
        from_queue(relay, 5, [good(i) for i in range(10)])  # 40 left, still dry: unread
        assert len(reads) == 3
        assert accepted(relay) == 160
        # Refilled to its burst, the flood is over: read down to the last token again.
        clock[0] += 3.0
        from_queue(relay, 6, [good(i) for i in range(10)])
        from_queue(relay, 7, [good(i) for i in range(10)])  # 140 left, no longer dry
        assert len(reads) == 5
        assert accepted(relay) == 180
    finally:
        relay.registry.close()


def test_a_small_plan_reads_again_after_about_one_second_of_its_rate(
    reads: list[str], clock: list[float]
) -> None:
    relay = make(max_batch_readings=100)
    relay.tenant_rates.plan("acme", 1.0, 100.0)  # 1/s: its opening level is one token
    try:
        from_queue(relay, 1, [good(i) for i in range(100)])
        from_queue(relay, 2, [good(i) for i in range(10)])  # none left: unread, dry
        assert accepted(relay) == 100
        clock[0] += 0.5
        from_queue(relay, 3, good(100))  # half a token: refused unread
        assert len(reads) == 1
        # Five seconds after running dry the plain bucket has five readings for it, and
        # so does the gate (a full batch of 100 would take 100 s to come back).
        clock[0] += 4.5
        from_queue(relay, 4, good(101))
        from_queue(relay, 5, [good(i) for i in range(10)])  # the other four, six by index
        assert len(reads) == 3
        assert accepted(relay) == 105
    finally:
        relay.registry.close()


def test_who_sent_it_is_checked_before_the_plan(reads: list[str]) -> None:
    relay = make(max_message_bytes=1000)
    relay.tenant_rates.plan("acme", 0.001, 2.0)
    try:
        from_queue(relay, 1, [good(0), good(1)])
        from_queue(relay, 2, b"x" * 2000)
        from_queue(relay, 3, good(2), key="dev-1")  # no stream: a malformed key
        from_queue(relay, 4, good(3), user_id="dev-2")
        from_queue(relay, 5, good(4))
        reasons = [
            p.headers[topology.REASON_HEADER] for _, _, p in published(relay, topology.REJECTED)
        ]
        assert reasons == [
            "too_large",
            "bad_routing_key",
            "identity_mismatch",
            "tenant_rate_limited",
        ]
        assert len(reads) == 4  # all but the last were read (the decoder refused them)
    finally:
        relay.registry.close()


def test_a_device_flooding_past_its_own_rate_is_read_and_counted_for_quarantine(
    reads: list[str],
) -> None:
    relay = make(
        device_rate=0.001, device_burst=10, rejected_device_rate=0.001, rejected_device_burst=5
    )
    units: list[tuple[str | None, str, int]] = []
    relay.quarantiner.refused_over_budget = (  # type: ignore[method-assign]
        lambda device, reason, count=1: units.append((device, reason.value, count))
    )
    unread_before = unread("acme", "rate_limited")
    try:
        for tag in range(1, 7):
            from_queue(relay, tag, [good(i) for i in range(10)])
        # Every batch is read: 10 accepted, 50 refused by index as rate_limited, five
        # kept by the device's refusal budget and 45 counted towards its quarantine.
        assert len(reads) == 6
        assert accepted(relay) == 10
        rejected = published(relay, topology.REJECTED)
        assert [k for k, _, _ in rejected] == ["rate_limited.dev-1"] * 5
        assert all(topology.INDEX_HEADER in p.headers for _, _, p in rejected)
        assert sum(n for _, _, n in units) == 45
        assert {(d, r) for d, r, _ in units} == {("dev-1", "rate_limited")}
        assert unread("acme", "rate_limited") == unread_before
    finally:
        relay.registry.close()


def test_unread_refusals_beyond_the_budgets_are_counted_and_acked(reads: list[str]) -> None:
    relay = make(rejected_tenant_rate=0.001, rejected_tenant_burst=1)
    relay.tenant_rates.plan("acme", 0.001, 1.0)
    over = REGISTRY.get_sample_value(
        "fairway_relay_rejected_over_budget_total",
        {"tenant": "acme", "reason": "tenant_rate_limited"},
    )
    try:
        from_queue(relay, 1, good(0))
        confirm(relay, 1)
        from_queue(relay, 2, [good(i) for i in range(50)])  # kept in rejected
        from_queue(relay, 3, [good(i) for i in range(50)])  # beyond the tenant's budget
        assert len(reads) == 1
        assert len(published(relay, topology.REJECTED)) == 1
        after = REGISTRY.get_sample_value(
            "fairway_relay_rejected_over_budget_total",
            {"tenant": "acme", "reason": "tenant_rate_limited"},
        )
        assert after - (over or 0.0) == 1  # one message: one reading's worth
        assert channel(relay).acks == [(1, True)]  # 3 waits behind 2, whose refusal is unconfirmed
        confirm(relay, 2)
        assert channel(relay).acks[-1] == (3, True)
    finally:
        relay.registry.close()


def test_an_unlimited_tenant_is_always_read(reads: list[str]) -> None:
    relay = make()
    try:
        for tag in range(1, 4):
            from_queue(relay, tag, [good(i) for i in range(100)])
        assert len(reads) == 3
        assert accepted(relay) == 300
    finally:
        relay.registry.close()


# -- parked on a registry look-up ----------------------------------------------------------
def parking(relay: Relay) -> Any:
    """Make ``relay``'s registry park every look-up until the returned ``answer`` is called
    (the real registry: its cache, its waiting list; only the database query is held)."""
    del relay.registry.lookup, relay.registry.wait  # make()'s synchronous stubs: the real ones
    relay.registry._query = lambda: None  # type: ignore[method-assign]

    def answer(found: dict[str, Device | None]) -> None:
        done: Future[dict[str, Device | None]] = Future()
        done.set_result(found)
        relay.registry._answered(list(relay.registry._waiting), done)

    return answer


def test_deliveries_parked_on_a_look_up_meet_the_plans_gate_when_the_database_answers(
    reads: list[str],
) -> None:
    relay = make()
    answer = parking(relay)
    relay.tenant_rates.plan("acme", 0.001, 4.0)  # room for two batches of two
    before, unread_before = over_plan("acme"), unread("acme", "tenant_rate_limited")
    try:
        for tag in range(1, 7):  # a flood's first deliveries, before the database answers
            from_queue(relay, tag, [good(0), good(1)])
        assert relay.registry.parked == 6
        assert reads == []  # nothing is read while it waits
        answer({"dev-1": Device("dev-1", "acme", enabled=True)})
        assert relay.registry.parked == 0
        # Released in order: the first two read and accepted, then the plan is spent and
        # the other four are refused whole and unread, as if the device had been cached.
        assert len(reads) == 2
        assert accepted(relay) == 4
        refused = published(relay, topology.REJECTED)
        assert [p.headers[topology.REASON_HEADER] for _, _, p in refused] == [
            "tenant_rate_limited"
        ] * 4
        assert all(topology.INDEX_HEADER not in p.headers for _, _, p in refused)
        # The same accounting: one reading each, charged once.
        assert over_plan("acme") - before == 4
        assert unread("acme", "tenant_rate_limited") - unread_before == 4
        for seq in range(1, 9):
            confirm(relay, seq)
        assert channel(relay).acks[-1] == (6, True)
        # Cached now: the next one meets the gate on arrival, as before.
        from_queue(relay, 7, good(9))
        assert len(reads) == 2 and relay.registry.parked == 0
        assert unread("acme", "tenant_rate_limited") - unread_before == 5
    finally:
        relay.registry.close()


def test_a_parked_delivery_keeps_the_order_of_reasons(reads: list[str]) -> None:
    relay = make(max_message_bytes=1000)
    answer = parking(relay)
    relay.tenant_rates.plan("acme", 0.001, 2.0)
    try:
        from_queue(relay, 1, b"x" * 2000)  # who sent it: refused at once, never parked
        from_queue(relay, 2, good(0), user_id="dev-2")
        assert relay.registry.parked == 0
        from_queue(relay, 3, b"{not json")  # within the plan: read once known, malformed
        from_queue(relay, 4, [good(0), good(1)])  # accepted
        from_queue(relay, 5, b"{not json")  # over the plan: refused unread
        from_queue(relay, 6, good(3), device="ghost")  # over the plan before the registry
        assert relay.registry.parked == 4
        answer({"dev-1": Device("dev-1", "acme", enabled=True), "ghost": None})
        reasons = [
            p.headers[topology.REASON_HEADER] for _, _, p in published(relay, topology.REJECTED)
        ]
        assert reasons == [
            "too_large",
            "identity_mismatch",
            "malformed_json",
            "tenant_rate_limited",
            "tenant_rate_limited",
        ]
        assert accepted(relay) == 2
        assert len(reads) == 4  # 1-4; 5 and 6 were not read
    finally:
        relay.registry.close()


def test_unlimited_tenants_and_the_shared_queue_are_read_before_they_park(
    reads: list[str],
) -> None:
    relay = make()
    answer = parking(relay)
    try:
        from_queue(relay, 1, [good(0)])  # acme has no plan: read, then parked
        deliver(relay, 2, b"{not json", device="stray")  # the shared ingest: refused at once
        deliver(relay, 3, good(1), device="stray")  # read, then parked
        assert len(reads) == 3 and relay.registry.parked == 2
        assert [k for k, _, _ in published(relay, topology.REJECTED)] == ["malformed_json.stray"]
        answer({"dev-1": Device("dev-1", "acme", enabled=True), "stray": None})
        assert len(reads) == 3
        assert accepted(relay) == 1
        assert published(relay, topology.REJECTED)[-1][0] == "unknown_device.stray"
    finally:
        relay.registry.close()


def test_a_delivery_released_after_its_channel_closed_is_left_to_the_broker(
    reads: list[str],
) -> None:
    relay = make()
    answer = parking(relay)
    relay.tenant_rates.plan("acme", 0.001, 4.0)
    before = over_plan("acme")
    try:
        from_queue(relay, 1, [good(0), good(1)])
        relay._ingest.channel = StubChannel()  # type: ignore[assignment]  # reconnected
        answer({"dev-1": Device("dev-1", "acme", enabled=True)})
        assert reads == [] and not channel(relay).published
        assert over_plan("acme") == before
        assert relay.tenant_rates.take("acme", time.time(), 4) == 4  # no token taken
    finally:
        relay.registry.close()
