"""How retention sizes and shares its work: hours to walk per device, fair shares."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from tasks.retention import fair_shares, hours_to_walk

T = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)


def test_hours_to_walk_counts_whole_hours_and_the_cutoff_hour() -> None:
    assert hours_to_walk(T, T) == 0  # nothing older than the cutoff
    assert hours_to_walk(T + H, T) == 0
    assert hours_to_walk(T - timedelta(milliseconds=1), T) == 1  # the hour before, whole
    assert hours_to_walk(T, T + timedelta(minutes=30)) == 1  # only the cutoff's hour
    assert hours_to_walk(T + timedelta(minutes=59), T + 2 * H + timedelta(seconds=1)) == 3
    assert hours_to_walk(T - timedelta(days=365), T) == 365 * 24


def test_fair_shares_give_small_needs_in_full_and_split_the_rest() -> None:
    assert fair_shares([2, 100, 100], 52, [0, 1, 2]) == [2, 25, 25]
    assert fair_shares([2, 100, 100], 1000, [0, 1, 2]) == [2, 100, 100]
    # Fewer hours than devices: one each to the oldest (the order given).
    assert fair_shares([5, 5, 5, 5], 2, [3, 1, 0, 2]) == [0, 1, 0, 1]
    assert fair_shares([], 10, []) == []


def test_fair_shares_are_bounded_and_use_the_budget() -> None:
    rnd = random.Random(12)
    for _ in range(2000):
        needs = [rnd.randint(0, 500) for _ in range(rnd.randint(0, 30))]
        budget = rnd.randint(0, 3000)
        order = list(range(len(needs)))
        rnd.shuffle(order)
        shares = fair_shares(needs, budget, order)
        assert all(0 <= s <= n for s, n in zip(shares, needs, strict=True))
        assert sum(shares) == min(budget, sum(needs))
        # Max-min fair: a device short of its need has at least any other's share - 1.
        for s, n in zip(shares, needs, strict=True):
            if s < n:
                assert all(s >= other - 1 for other in shares)
