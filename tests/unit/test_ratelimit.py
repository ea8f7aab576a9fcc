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


def test_a_bucket_is_closed_without_a_token_or_while_dry_below_the_level() -> None:
    limiter = RateLimiter(rate=10.0, burst=20.0, max_keys=10)
    assert not limiter.closed("d", 0.0, 5.0)  # no bucket: full
    assert "d" not in limiter._buckets  # and none is made
    assert limiter.take("d", 0.0, 18) == 18
    assert not limiter.closed("d", 0.0, 5.0)  # 2 left and never refused: open
    assert limiter.take("d", 0.0, 5) == 2  # refused 3: dry
    assert limiter.closed("d", 0.0, 5.0)  # no token
    assert limiter.closed("d", 0.3, 5.0)  # 3 tokens, dry, below the level
    assert not limiter.closed("d", 0.5, 5.0)  # 5: open for this one
    assert limiter.take("d", 0.5, 100) == 5  # the gate took nothing
    assert limiter.closed("d", 0.9, 5.0)  # 4, still dry: closed below the level
    assert not limiter.closed("d", 2.5, 5.0)  # refilled to the burst: no longer dry
    limiter.take("d", 2.5, 18)
    assert not limiter.closed("d", 2.5, 5.0)  # 2 left, never refused since: open


def test_a_dry_bucket_opens_at_its_burst_when_the_level_is_above_it() -> None:
    limiter = RateLimiter(rate=10.0, burst=3.0, max_keys=10)
    limiter.take("d", 0.0, 4)
    assert limiter.closed("d", 0.25, 100.0)  # 2.5 of a burst of 3
    assert not limiter.closed("d", 0.3, 100.0)


def test_a_tenant_bucket_closes_like_a_device_bucket() -> None:
    rates = TenantRates(0.0, 0.0, 100.0, 10)
    assert not rates.closed("t", 0.0, 100.0)  # unlimited: never
    rates.plan("t", 10.0, 30.0)
    assert not rates.closed("t", 0.0, 100.0)  # no bucket yet: full
    assert rates.take("t", 0.0, 29) == 29
    assert not rates.closed("t", 0.0, 100.0)  # one token, never refused
    assert rates.take("t", 0.0, 5) == 1  # dry
    assert rates.closed("t", 2.9, 100.0)  # 29 of a burst of 30
    assert not rates.closed("t", 3.0, 100.0)  # full: the level is at most the burst
    rates.take("t", 3.0, 29)
    assert not rates.closed("t", 3.0, 100.0)  # full, so no longer dry: one token opens
    rates.plan("t", 10.0, 40.0)  # a changed plan starts full and open
    assert not rates.closed("t", 3.0, 100.0)
