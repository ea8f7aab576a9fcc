"""Device quarantine: when the relay acts on refusals beyond budget, and how long it lasts."""

from __future__ import annotations

import pytest

from fairway.kernel.settings import Settings, SettingsError
from fairway.storage.quarantine import Quarantine, next_offence, period
from ingest import metrics
from ingest.quarantine import (
    SWEEP_CALLS_BURST,
    SWEEP_CALLS_PER_S,
    SWEEP_MAX_DEVICES,
    SWEEP_S,
    CallBudget,
    ConnectedCheck,
    QuarantineWatch,
    Sweep,
)


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


def _calls(call: str, answer: str) -> float:
    return metrics.QUARANTINE_MGMT_CALLS.labels(call, answer)._value.get()


def test_the_call_budget_allows_its_burst_then_its_rate_and_counts_both_answers() -> None:
    budget = CallBudget(per_s=20.0, burst=20.0)
    asked, limited = _calls("close", "asked"), _calls("close", "limited")
    assert [budget.take("close", 10.0) for _ in range(30)].count(True) == 20
    assert _calls("close", "asked") == asked + 20 and _calls("close", "limited") == limited + 10
    assert [budget.take("close", 10.25) for _ in range(30)].count(True) == 5  # 20/s x 0.25 s
    assert budget.left(100.0) == 20.0  # never more than the burst


class Broker:
    """A stand-in for the management API in the sweep's unit tests: which devices are
    connected, and every call made (the integration tests use the real one)."""

    def __init__(self, fleet: int = 0) -> None:
        self.connected: set[str] = set()
        self.fleet = fleet
        self.calls: list[str] = []

    def list_users(self) -> tuple[set[str], int]:
        self.calls.append("list")
        return set(self.connected), self.fleet + len(self.connected)

    def close(self, user: str) -> None:
        self.calls.append(f"close {user}")
        self.connected.discard(user)


def test_the_sweep_closes_each_device_in_turn_when_a_list_would_cost_more() -> None:
    broker = Broker(fleet=100_000)  # a list would cost about 1,000 closes
    sweep = Sweep(CallBudget(20.0, 20.0), broker.list_users, broker.close, "/")
    sweep.fleet = 100_000
    devices = [f"d{i}" for i in range(50)]
    served: dict[str, list[float]] = {d: [] for d in devices}
    for n in range(40):  # 10 s of passes
        now = n * 0.25
        for user in sweep.run(devices, now):
            served[user].append(now)
    assert "list" not in broker.calls
    # 20 at once, then 5 a pass: every device served at least every 50/20 = 2.5 s.
    assert len(broker.calls) == 20 + 39 * 5
    for times in served.values():
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
        assert times and max(gaps) <= 2.5, times


def test_the_sweep_lists_once_and_closes_only_the_connected_when_that_is_cheaper() -> None:
    broker = Broker(fleet=200)
    sweep = Sweep(CallBudget(20.0, 20.0), broker.list_users, broker.close, "/")
    devices = [f"d{i}" for i in range(50)]
    broker.connected = {"d3", "d40", "/:d7", "someone-else"}
    closed = sweep.run(devices, 0.0)
    assert broker.calls[0] == "list" and sorted(closed) == ["/:d7", "d3", "d40"]
    assert sweep.fleet == 204 and sweep.list_cost() == pytest.approx(3.04)
    # Nobody connected: one call a pass serves all 50 devices.
    broker.calls.clear()
    for n in range(1, 9):
        assert sweep.run(devices, n * 0.25) == []
    assert broker.calls == ["list"] * 8
    # Three devices or fewer (a list costs about 3 closes): a close each, no list.
    broker.calls.clear()
    sweep.run(devices[:3], 3.0)
    assert broker.calls == ["close d0", "close d1", "close d2"]


def test_a_failed_list_falls_back_to_a_close_each() -> None:
    broker = Broker()
    sweep = Sweep(CallBudget(20.0, 20.0), _failing_list, broker.close, "/")
    devices = [f"d{i}" for i in range(5)]
    assert sweep.run(devices, 0.0) == devices  # before: nothing closed while lists failed
    assert broker.calls == [f"close {d}" for d in devices]


def _failing_list() -> tuple[set[str], int]:
    raise TimeoutError("management API")


def test_no_list_when_it_costs_more_than_the_closes_the_pass_can_afford() -> None:
    # 9,000 connections: a list is ~91 closes' worth; a pass affords 5 closes.
    broker = Broker(fleet=9000)
    sweep = Sweep(CallBudget(20.0, 20.0), broker.list_users, broker.close, "/")
    sweep.fleet = 9000
    devices = [f"d{i}" for i in range(100)]
    sweep.run(devices, 0.0)
    sweep.run(devices, 0.25)
    assert "list" not in broker.calls and len(broker.calls) == 20 + 5


def test_under_the_budget_connected_devices_are_served_least_recently_served_first() -> None:
    broker = Broker()
    sweep = Sweep(CallBudget(20.0, 20.0), broker.list_users, broker.close, "/")
    devices = [f"d{i}" for i in range(50)]
    broker.connected = set(devices)
    assert len(sweep.run(devices, 0.0)) == 19  # the list and 19 closes (the burst)
    second = sweep.run(devices, 0.25)  # a list and 4 closes: the next in line
    assert second == ["d19", "d20", "d21", "d22"]


def _longest_connected(swept: int, reconnect_s: float, fleet: int, seconds: float) -> float:
    """Devices reconnecting ``reconnect_s`` after each close, swept by one relay for
    ``seconds``: the longest any connection stayed open (passes every SWEEP_S)."""
    broker = Broker(fleet=fleet)
    budget = CallBudget(SWEEP_CALLS_PER_S, SWEEP_CALLS_BURST)
    sweep = Sweep(budget, broker.list_users, broker.close, "/")
    devices = [f"d{i}" for i in range(swept)]
    opened = dict.fromkeys(devices, 0.0)  # every device connected at the start
    broker.connected = set(devices)
    longest, now = 0.0, 0.0
    while now < seconds:
        now += SWEEP_S
        for device in devices:  # reconnects due before this pass
            if device not in broker.connected and now - opened[device] >= reconnect_s:
                broker.connected.add(device)
                opened[device] = now - (now - opened[device] - reconnect_s)
        for user in sweep.run(devices, now):
            longest = max(longest, now - opened[user])
            opened[user] = now
    return longest


def test_the_documented_bound_holds_for_attackers_reconnecting_every_half_second() -> None:
    # docs/security.md: one swept device is cut at the next pass; a full sweep (100
    # devices, every one reconnecting every 0.5 s) within 100 / (20 - 4) passes' worth
    # of closes plus a pass: 6.5 s, whether the sweep lists (small fleet) or not.
    assert _longest_connected(1, 0.5, fleet=1000, seconds=70) <= SWEEP_S
    assert SWEEP_MAX_DEVICES == 100
    for fleet in (0, 1_000, 100_000):
        assert _longest_connected(100, 0.5, fleet=fleet, seconds=70) <= 6.5
