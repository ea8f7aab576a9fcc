"""Device quarantine: when the relay acts on refusals beyond budget, and how long it lasts."""

from __future__ import annotations

import pytest

from fairway.kernel.settings import Settings, SettingsError
from fairway.storage.quarantine import Quarantine, next_offence, period
from ingest.quarantine import ConnectedCheck, QuarantineWatch


def test_a_flood_beyond_the_budget_trips_the_watch_once_the_bucket_is_empty() -> None:
    watch = QuarantineWatch(refusals=100, window_s=10.0, max_keys=10, recheck_s=5.0)
    now = 1000.0
    answers = [watch.over_budget("flood", now) for _ in range(150)]
    assert answers.index(True) == 100  # the 101st refusal within the window
    assert answers.count(True) == 1  # then at most once per recheck
    # Still flooding (1,000 a second) 6 s on: acted on again once the recheck is due.
    later = [now + 0.001 * i for i in range(6000)]
    acted = [t for t in later if watch.over_budget("flood", t)]
    assert len(acted) == 1 and 1005.0 <= acted[0] < 1005.1


def test_a_trickle_beyond_the_budget_never_trips_it() -> None:
    # 100 per 10 s refills 10 a second: 9 a second beyond budget, for an hour, is fine.
    watch = QuarantineWatch(refusals=100, window_s=10.0, max_keys=10)
    assert not any(watch.over_budget("noisy", i / 9.0) for i in range(9 * 3600))


def test_a_batch_counts_its_readings_and_devices_are_counted_apart() -> None:
    watch = QuarantineWatch(refusals=100, window_s=10.0, max_keys=10)
    assert not watch.over_budget("a", 0.0, readings=100)
    assert watch.over_budget("a", 0.0, readings=1)
    assert not watch.over_budget("b", 0.0, readings=1)


def test_zero_refusals_turns_quarantine_off() -> None:
    watch = QuarantineWatch(refusals=0, window_s=10.0, max_keys=10)
    assert not any(watch.over_budget("flood", 0.0, 1000) for _ in range(100))


def test_the_period_doubles_per_offence_up_to_the_maximum() -> None:
    assert [period(n, 300, 86_400) for n in (1, 2, 3, 4)] == [300, 600, 1200, 2400]
    assert period(9, 300, 86_400) == 76_800
    assert period(10, 300, 86_400) == 86_400
    assert period(10_000, 300, 86_400) == 86_400  # no overflow


def test_offences_count_up_unless_the_last_one_is_long_past() -> None:
    last = Quarantine("d", "t", since=0.0, until=300.0, offences=3, reason="device_quarantined")
    assert next_offence(None, 1000.0, 86_400) == 1
    assert next_offence(last, 1000.0, 86_400) == 4
    assert next_offence(last, 300.0 + 86_400, 86_400) == 1  # forgiven after the maximum
    assert last.holds(299.0) and not last.holds(300.0)


def test_quarantine_settings_are_validated() -> None:
    with pytest.raises(SettingsError, match="FAIRWAY_QUARANTINE_MAX_S"):
        Settings.from_env({"FAIRWAY_QUARANTINE_S": "600", "FAIRWAY_QUARANTINE_MAX_S": "60"})
    with pytest.raises(SettingsError, match="FAIRWAY_QUARANTINE_REFUSALS"):
        Settings.from_env({"FAIRWAY_QUARANTINE_REFUSALS": "-1"})
    with pytest.raises(SettingsError, match="FAIRWAY_QUARANTINE_WINDOW_S"):
        Settings.from_env({"FAIRWAY_QUARANTINE_WINDOW_S": "0"})
    ok = Settings.from_env({"FAIRWAY_QUARANTINE_REFUSALS": "0"})
    assert ok.quarantine_refusals == 0 and ok.quarantine_s == 300.0


def test_only_refusals_of_what_the_device_sent_count() -> None:
    from typing import Any, cast

    from fairway.kernel.reasons import Reason
    from ingest.quarantine import COUNTED, Quarantiner

    assert Reason.TENANT_BACKLOG_FULL not in COUNTED and Reason.UNROUTABLE not in COUNTED
    assert Reason.DEVICE_DISABLED not in COUNTED and Reason.MALFORMED_JSON in COUNTED
    q = Quarantiner(Settings(quarantine_refusals=10), cast(Any, None))
    acted: list[str] = []
    q._worker.submit = lambda fn, device: acted.append(device)  # type: ignore[method-assign]
    for _ in range(100):
        q.refused_over_budget("busy", Reason.TENANT_BACKLOG_FULL, 50)
    assert acted == []
    q.refused_over_budget("flood", Reason.MALFORMED_JSON, 11)
    q.refused_over_budget("flood", Reason.MALFORMED_JSON, 1)
    assert acted == ["flood"]
    q.close()


def test_the_connected_check_keeps_a_no_and_stays_within_its_budget_of_calls() -> None:
    asked: list[str] = []
    online = {"flood"}

    def ask(device: str) -> bool:
        asked.append(device)
        return device in online

    check = ConnectedCheck(ask, max_keys=1000, ttl_s=10.0, per_s=5.0, burst=20.0)
    # A device draining an old backlog, acted on every 2 s for a minute: asked once per
    # 10 s, not once per refusal beyond its bucket.
    assert [check("drain", t * 2.0) for t in range(30)].count(False) == 30
    assert asked.count("drain") == 6
    # A connected device is asked each time (it is quarantined on the first answer).
    assert check("flood", 100.0) is True and check("flood", 100.0) is True
    # 500 devices at once: 20 asked (the burst), the rest not asked now.
    answers = [check(f"d{i}", 200.0) for i in range(500)]
    assert answers.count(False) == 20 and answers.count(None) == 480
    # Then 5 a second, however many wait.
    assert [check(f"d{i}", 201.0) for i in range(20, 500)].count(False) == 5
