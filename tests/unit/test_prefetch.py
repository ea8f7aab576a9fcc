from scheduler.prefetch import floor_prefetch, prefetch_shares, worth_changing

WEIGHTS = {"a": 1, "b": 2, "c": 3, "d": 4, "idle": 5}
FLOORS = dict.fromkeys(WEIGHTS, 100)


def test_backlogged_tenants_share_the_budget_by_weight() -> None:
    backlogged = {t: w for t, w in WEIGHTS.items() if t != "idle"}
    shares = prefetch_shares(FLOORS, backlogged, budget=3000)
    assert shares == {"a": 300, "b": 600, "c": 900, "d": 1200, "idle": 100}


def test_a_lone_backlogged_tenant_gets_the_whole_budget() -> None:
    shares = prefetch_shares(FLOORS, {"b": 2}, budget=3000)
    assert shares == {"a": 100, "b": 3000, "c": 100, "d": 100, "idle": 100}


def test_nobody_backlogged_means_everybody_at_the_floor() -> None:
    assert set(prefetch_shares(FLOORS, {}, budget=3000).values()) == {100}


def test_the_floor_holds_when_the_budget_is_spread_thin() -> None:
    tenants = {f"t{i}": 1 for i in range(100)}
    shares = prefetch_shares(dict.fromkeys(tenants, 50), tenants, budget=3000)
    assert set(shares.values()) == {50}


def test_small_changes_are_not_worth_a_round_trip() -> None:
    assert not worth_changing(1000, 1200)
    assert worth_changing(1000, 1250)
    assert worth_changing(1000, 750)
    assert worth_changing(100, 3000)


# -- the budget in readings (a message is a bundle) --------------------------------------


def test_single_readings_keep_the_message_floor_and_shares() -> None:
    # 200 tenants of single readings: 100,000 / 200 = 500 readings each, above the floor.
    assert floor_prefetch(100, 100_000, 200, 1.0) == 100
    backlogged = {"a": 1, "b": 2}
    shares = prefetch_shares({"a": 100, "b": 100}, backlogged, 3000, 100_000, {"a": 1, "b": 1})
    assert shares == {"a": 1000, "b": 2000}  # the message budget binds, as before


def test_full_bundles_shrink_the_floor_to_the_readings_budget() -> None:
    # 200 tenants x bundles of 50: 100,000 / (200 x 50) = 10 bundles each, not 100.
    assert floor_prefetch(100, 100_000, 200, 50.0) == 10
    # 10 tenants: 200 bundles would fit, the message floor binds.
    assert floor_prefetch(100, 100_000, 10, 50.0) == 100


def test_the_floor_is_one_message_at_least_whatever_the_bundle() -> None:
    # 10,000 tenants of bundles of 1,000: 0.01 bundle each, still 1 (it holds one bundle).
    assert floor_prefetch(100, 100_000, 10_000, 1000.0) == 1
    assert floor_prefetch(100, 100_000, 0, 1.0) == 100  # no tenant known yet


def test_backlogged_bundles_share_the_readings_budget_by_weight() -> None:
    backlogged = {"a": 1, "b": 3}
    each = {"a": 50.0, "b": 50.0}
    shares = prefetch_shares({"a": 10, "b": 10}, backlogged, 3000, 100_000, each)
    # readings: 25,000 and 75,000 -> 500 and 1,500 bundles (the message budget: 750, 2250)
    assert shares == {"a": 500, "b": 1500}
    assert sum(shares[t] * each[t] for t in shares) <= 100_000


def test_two_hundred_backlogged_tenants_in_full_bundles_hold_the_budget() -> None:
    tenants = {f"t{i}": 1 for i in range(200)}
    each = dict.fromkeys(tenants, 50.0)
    floor = floor_prefetch(100, 100_000, len(tenants), 50.0)
    shares = prefetch_shares(dict.fromkeys(tenants, floor), tenants, 3000, 100_000, each)
    assert set(shares.values()) == {10}
    assert sum(shares[t] * each[t] for t in tenants) == 100_000  # not 200 x 100 x 50 = 1M


def test_a_backlogged_share_never_falls_below_the_tenants_floor() -> None:
    # A weight-1 tenant among heavy ones: its readings share (1/100 of 100,000 = 20
    # bundles) is under its floor of 40: it keeps the floor.
    backlogged = {"light": 1, "heavy": 99}
    each = {"light": 50.0, "heavy": 50.0}
    shares = prefetch_shares({"light": 40, "heavy": 40}, backlogged, 3000, 100_000, each)
    assert shares["light"] == 40
    assert shares["heavy"] == 1980


def test_mixed_formats_each_get_their_readings_in_messages() -> None:
    backlogged = {"single": 1, "bundled": 1}
    each = {"single": 1.0, "bundled": 40.0}
    shares = prefetch_shares({"single": 100, "bundled": 25}, backlogged, 3000, 20_000, each)
    # 10,000 readings each: 10,000 single messages (message budget 1,500 binds), 250 bundles
    assert shares == {"single": 1500, "bundled": 250}
