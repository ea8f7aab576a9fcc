"""Unit tests for ``fairway.amqp.Backoff``."""

from __future__ import annotations

from fairway.amqp.backoff import Backoff


def test_default_sequence_doubles_then_caps() -> None:
    b = Backoff()
    assert [b.next() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_stays_capped_for_many_attempts() -> None:
    b = Backoff()
    delays = [b.next() for _ in range(2000)]  # 2**n would overflow a float by now
    assert delays[-1] == 10.0
    assert max(delays) == 10.0


def test_reset_starts_over() -> None:
    b = Backoff()
    for _ in range(5):
        b.next()
    b.reset()
    assert [b.next() for _ in range(3)] == [0.5, 1.0, 2.0]


def test_custom_base_and_cap() -> None:
    b = Backoff(base=0.1, cap=0.5)
    assert [b.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_cap_below_base() -> None:
    b = Backoff(base=2.0, cap=1.0)
    assert [b.next() for _ in range(3)] == [1.0, 1.0, 1.0]
