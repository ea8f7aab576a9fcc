"""Login rates per address and per user (web.login_rate), without a clock: the buckets
are refilled at a rate far below the test's duration."""

from __future__ import annotations

import os

from web.login_rate import LoginRate, password_checks


def test_an_address_gets_its_burst_then_waits_for_a_token() -> None:
    rate = LoginRate(addr_rate=0.01, addr_burst=3, user_rate=1, user_burst=1)
    assert [rate.address_wait("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rate.address_wait("10.0.0.1")
    assert 1 <= wait <= 100, wait  # one token at 0.01/s
    assert rate.address_wait("10.0.0.2") == 0.0  # another address has its own bucket


def test_only_successful_logins_spend_a_users_tokens() -> None:
    rate = LoginRate(addr_rate=1, addr_burst=100, user_rate=0.01, user_burst=2)
    for _ in range(10):  # checks (a stranger's wrong passwords) take nothing
        assert rate.user_wait("alice") == 0.0
    rate.user_succeeded("alice")
    assert rate.user_wait("alice") == 0.0
    rate.user_succeeded("alice")
    assert rate.user_wait("alice") >= 1
    assert rate.user_wait("bob") == 0.0


def test_password_checks_follow_the_cores_unless_set() -> None:
    assert password_checks(3) == 3
    assert password_checks(0) == max(1, (os.cpu_count() or 2) // 2)
