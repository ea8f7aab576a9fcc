"""Unit tests for ``ingest.ratelimit.RateLimiter`` over simulated time."""

from __future__ import annotations

from ingest.ratelimit import RateLimiter, RefusalBudget, TenantRates


def test_burst_then_refusal() -> None:
    rl = RateLimiter(rate=1.0, burst=3.0, max_keys=10)
    assert [rl.allow("d", 100.0) for _ in range(5)] == [True, True, True, False, False]


def test_refill_over_time() -> None:
    rl = RateLimiter(rate=2.0, burst=4.0, max_keys=10)
    assert all(rl.allow("d", 0.0) for _ in range(4))
    assert rl.allow("d", 0.0) is False
    assert rl.allow("d", 0.25) is False  # 0.5 tokens
    assert rl.allow("d", 0.5) is True  # 1.0 token
    assert rl.allow("d", 0.5) is False
    # a long pause refills to the burst, never beyond it
    assert [rl.allow("d", 100.0) for _ in range(6)] == [True] * 4 + [False] * 2


def test_an_earlier_time_takes_what_is_left_and_never_drains_the_bucket() -> None:
    """A reading released from a registry look-up is charged at its arrival, which may
    precede the bucket's last refill: no refill backwards (it went negative)."""
    rl = RateLimiter(rate=10.0, burst=3.0, max_keys=10)
    assert rl.take("d", 1005.0, 1) == 1
    assert rl.take("d", 1000.0, 5) == 2  # what is left at 1005 s
    assert rl.peek("d", 1005.0) == 0.0 and rl.take("d", 1005.1, 1) == 1


def test_refusals_do_not_consume_tokens() -> None:
    rl = RateLimiter(rate=1.0, burst=1.0, max_keys=10)
    assert rl.allow("d", 0.0) is True
    for t in (0.1, 0.2, 0.3, 0.4):
        assert rl.allow("d", t) is False
    assert rl.allow("d", 1.0) is True


def test_sustained_rate() -> None:
    rl = RateLimiter(rate=10.0, burst=5.0, max_keys=10)
    allowed = 0
    # offer 100 msg/s for 10 simulated seconds
    for i in range(1000):
        allowed += rl.allow("d", i / 100)
    # burst + rate * elapsed (9.99 s)
    assert allowed == 5 + 99


def test_devices_are_independent() -> None:
    rl = RateLimiter(rate=1.0, burst=2.0, max_keys=10)
    assert [rl.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert [rl.allow("b", 0.0) for _ in range(3)] == [True, True, False]


def test_lru_bound_evicts_least_recently_used() -> None:
    rl = RateLimiter(rate=1.0, burst=1.0, max_keys=2)
    assert rl.allow("a", 0.0) is True
    assert rl.allow("b", 0.0) is True
    assert rl.allow("a", 0.0) is False  # a used most recently now
    assert rl.allow("c", 0.0) is True  # evicts b, the least recently used
    assert len(rl._buckets) == 2
    assert rl.allow("a", 0.0) is False  # a kept its empty bucket
    # b was evicted: it starts again with a full bucket (errs on accepting)
    assert rl.allow("b", 0.0) is True


def test_bucket_count_never_exceeds_bound() -> None:
    rl = RateLimiter(rate=1.0, burst=1.0, max_keys=50)
    for i in range(1000):
        assert rl.allow(f"dev{i}", float(i)) is True
        assert len(rl._buckets) <= 50
    assert len(rl._buckets) == 50


def test_take_grants_whole_tokens_up_to_what_is_left() -> None:
    rl = RateLimiter(rate=1.0, burst=5.0, max_keys=10)
    assert rl.take("d", 0.0, 3) == 3
    assert rl.take("d", 0.0, 3) == 2  # two left: the third reading is not granted
    assert rl.take("d", 0.0, 3) == 0
    assert rl.take("d", 1.5, 3) == 1  # 1.5 tokens refilled: one whole
    assert rl.take("d", 100.0, 10) == 5  # never beyond the burst
    assert rl.allow("d", 100.0) is False  # one bucket for both ways of taking


def test_a_cost_above_what_is_left_overdraws_and_the_rate_holds() -> None:
    rl = RateLimiter(rate=1.0, burst=5.0, max_keys=10)
    assert rl.allow("d", 0.0, cost=10) is True  # allowed while one token is left ...
    assert rl.allow("d", 5.0, cost=1) is False  # ... and repaid: -5 + 5 = 0 tokens
    assert rl.allow("d", 6.0, cost=1) is True


def test_refusal_budget_charges_readings_to_device_and_tenant() -> None:
    budget = RefusalBudget(1.0, 10.0, 1.0, 12.0, max_keys=10)
    assert budget.spent("d1", "t", 0.0, readings=10) is None  # device 0 left, tenant 2
    assert budget.spent("d1", "t", 0.0) is not None  # the device's budget is spent
    assert budget.spent("d2", "t", 0.0, readings=2) is None  # tenant 0 left
    assert budget.spent("d3", "t", 0.0) is not None  # the tenant's budget is spent


def test_refusal_budget_says_which_budget_is_spent() -> None:
    budget = RefusalBudget(1.0, 2.0, 1.0, 3.0, max_keys=10)
    assert budget.spent("d1", "t", 0.0, readings=2) is None  # device 0 left, tenant 1
    assert budget.spent("d1", "t", 0.0) == "device"
    assert budget.spent("d2", "t", 0.0) is None  # tenant 0 left
    assert budget.spent("d3", "t", 0.0) == "tenant"
    assert budget.spent("d4", None, 0.0) is None  # no tenant: the device's budget only


def test_a_tenant_bucket_is_closed_without_a_token_or_while_dry_below_its_opening() -> None:
    rates = TenantRates(0.0, 0.0, 100.0, 10)
    assert not rates.gate_closed("t", 0.0)  # unlimited: never
    rates.plan("t", 10.0, 30.0)  # opens at 10 tokens: one second of its rate
    assert not rates.gate_closed("t", 0.0)  # no bucket yet: full
    assert "t" not in rates._buckets  # and none is made
    assert rates.take("t", 0.0, 29) == 29
    assert not rates.gate_closed("t", 0.0)  # one token, never refused: open
    assert rates.take("t", 0.0, 5) == 1  # dry
    assert rates.gate_closed("t", 0.0)  # no token
    assert rates.gate_closed("t", 0.9)  # 9, dry, below the opening level
    assert not rates.gate_closed("t", 1.0)  # 10: open for this one
    assert rates.take("t", 1.0, 100) == 10  # the gate took nothing
    assert rates.gate_closed("t", 1.5)  # 5, still dry: closed below the opening level
    assert not rates.gate_closed("t", 4.5)  # refilled to the burst: no longer dry
    rates.take("t", 4.5, 29)
    assert not rates.gate_closed("t", 4.5)  # one token, never refused since: open
    rates.plan("t", 10.0, 40.0)  # a changed plan starts full and open
    assert not rates.gate_closed("t", 4.5)


def test_a_gate_finding_no_token_marks_the_bucket_dry() -> None:
    rates = TenantRates(0.0, 0.0, 100.0, 10)
    rates.plan("t", 10.0, 30.0)
    assert rates.take("t", 0.0, 30) == 30  # all granted: not dry
    assert rates.gate_closed("t", 0.05)  # half a token: closed, and now dry
    assert rates.gate_closed("t", 0.5)  # 5 tokens below the opening level of 10


def test_the_opening_level_is_a_full_batch_at_most_the_burst_and_one_second_of_the_rate() -> None:
    rates = TenantRates(0.0, 0.0, 100.0, 10)
    assert rates.opening_of(1000.0, 2000.0) == 100.0  # a full batch
    assert rates.opening_of(1000.0, 40.0) == 40.0  # the burst
    assert rates.opening_of(50.0, 200.0) == 50.0  # one second of the rate
    assert rates.opening_of(1.0, 100.0) == 1.0  # a small plan: one token
    assert rates.opening_of(0.01, 100.0) == 1.0  # never below one token
