"""Online and last seen from connections and stored readings (fairway.domain.presence)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fairway.domain.presence import Presence, presence

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
S = timedelta(seconds=1)


def test_never_seen_is_offline() -> None:
    assert presence(False, None, None, NOW, 300) == Presence(False, False, None, None)


def test_a_recent_reading_is_online_without_a_connection() -> None:
    assert presence(False, None, NOW - 10 * S, NOW, 300) == Presence(
        True, False, NOW - 10 * S, "reading"
    )
    assert presence(False, None, NOW - 300 * S, NOW, 300).online
    assert presence(False, None, NOW - 301 * S, NOW, 300) == Presence(
        False, False, NOW - 301 * S, None
    )


def test_connected_is_online_and_last_seen_is_the_later_source() -> None:
    old_connect = NOW - 3600 * S
    assert presence(True, old_connect, NOW - 7200 * S, NOW, 300) == Presence(
        True, True, old_connect, "connection"
    )
    # Disconnected an hour ago, a reading a minute ago: seen a minute ago, online by reading.
    assert presence(False, old_connect, NOW - 60 * S, NOW, 300) == Presence(
        True, False, NOW - 60 * S, "reading"
    )


def test_a_fast_clock_counts_as_seen_now() -> None:
    assert presence(False, None, NOW + 120 * S, NOW, 300) == Presence(True, False, NOW, "reading")
