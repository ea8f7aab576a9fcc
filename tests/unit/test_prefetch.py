from scheduler.prefetch import prefetch_shares, worth_changing

WEIGHTS = {"a": 1, "b": 2, "c": 3, "d": 4, "idle": 5}


def test_backlogged_tenants_share_the_budget_by_weight() -> None:
    backlogged = {t: w for t, w in WEIGHTS.items() if t != "idle"}
    shares = prefetch_shares(WEIGHTS, backlogged, budget=3000, floor=100)
    assert shares == {"a": 300, "b": 600, "c": 900, "d": 1200, "idle": 100}


def test_a_lone_backlogged_tenant_gets_the_whole_budget() -> None:
    shares = prefetch_shares(WEIGHTS, {"b": 2}, budget=3000, floor=100)
    assert shares == {"a": 100, "b": 3000, "c": 100, "d": 100, "idle": 100}


def test_nobody_backlogged_means_everybody_at_the_floor() -> None:
    assert set(prefetch_shares(WEIGHTS, {}, budget=3000, floor=100).values()) == {100}


def test_the_floor_holds_when_the_budget_is_spread_thin() -> None:
    tenants = {f"t{i}": 1 for i in range(100)}
    shares = prefetch_shares(tenants, tenants, budget=3000, floor=50)
    assert set(shares.values()) == {50}


def test_small_changes_are_not_worth_a_round_trip() -> None:
    assert not worth_changing(1000, 1200)
    assert worth_changing(1000, 1250)
    assert worth_changing(1000, 750)
    assert worth_changing(100, 3000)
