"""How many tenant queue declarations the scheduler keeps in flight on one connection."""

from __future__ import annotations

from scheduler.queue_declare import DECLARES_IN_FLIGHT, declare_limit


def test_the_default_when_the_broker_allows_many_channels() -> None:
    assert declare_limit(2047, 18) == DECLARES_IN_FLIGHT


def test_fewer_when_channel_max_is_low_and_the_reserved_channels_are_kept() -> None:
    assert declare_limit(40, 4) == 36


def test_at_least_one_even_when_the_reserved_channels_take_everything() -> None:
    assert declare_limit(10, 18) == 1


def test_no_negotiated_limit_means_the_default() -> None:
    assert declare_limit(0, 18) == DECLARES_IN_FLIGHT
