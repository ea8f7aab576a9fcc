"""The scheduler's buffer budget in readings (scheduler/service.py, scheduler/prefetch.py).

A prefetch counts messages and a message is a bundle, so each consumer's prefetch is
sized from the readings budget and the readings per message its tenant sends: the
floor when it starts (full bundles assumed until it is heard from), then what its
deliveries say.
"""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from fairway.domain.tenant_watch import TenantChanges
from fairway.kernel.settings import Settings, SettingsError
from fairway.storage.registry import Tenant
from scheduler.service import Scheduler
from scheduler.sink import NullSink
from scheduler.tenant_channel import TenantConsumer
from tests.unit.test_scheduler_settle import (  # noqa: F401 - the fixture
    StubChannel,
    sample,
    stopped,
)

SETTINGS = Settings(
    scheduler_prefetch=100,
    scheduler_buffer=3000,
    scheduler_buffer_readings=100_000,
    bundle_max_readings=50,
)


def listed(scheduler: Scheduler, count: int) -> list[TenantConsumer]:
    """``count`` tenants listed at once (not connected: the pool opens channels later)."""
    answer: Future[TenantChanges] = Future()
    tenants = [Tenant(f"t{i:03d}", weight=1, max_backlog=1000) for i in range(count)]
    answer.set_result(TenantChanges(tenants, full=True))
    scheduler._tenants_listed(answer)
    return [scheduler.tenant_channels[t.id] for t in tenants]


def made(stopped: list[Scheduler]) -> Scheduler:  # noqa: F811
    scheduler = Scheduler(SETTINGS, NullSink(), list_tenants=list)
    scheduler.call_soon = lambda callback: callback()  # type: ignore[method-assign]
    scheduler._dispatch = lambda express=True: None  # type: ignore[method-assign]
    stopped.append(scheduler)
    return scheduler


def changes(consumer: TenantConsumer) -> list[int]:
    """Record the prefetch changes asked of ``consumer`` (its channel is a stub)."""
    asked: list[int] = []

    def change(wanted: int) -> bool:
        asked.append(wanted)
        consumer.prefetch = wanted
        return True

    consumer.change_prefetch = change  # type: ignore[method-assign]
    return asked


def deliver(scheduler: Scheduler, consumer: TenantConsumer, tag: int, readings: int) -> None:
    method = SimpleNamespace(delivery_tag=tag, consumer_tag="c1")
    scheduler._on_message(consumer, method, b"{}", readings)  # type: ignore[arg-type]


def test_two_hundred_tenants_start_with_a_floor_of_full_bundles_within_the_budget(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    scheduler = made(stopped)
    consumers = listed(scheduler, 200)
    # 100,000 readings / (200 tenants x 50) = 10 bundles each, not the message floor of 100
    assert {c.prefetch for c in consumers} == {10}
    assert sample("fairway_scheduler_prefetch_readings") == 200 * 10 * 50


def test_ten_tenants_keep_the_message_floor(stopped: list[Scheduler]) -> None:  # noqa: F811
    scheduler = made(stopped)
    assert {c.prefetch for c in listed(scheduler, 10)} == {100}


def test_a_tenant_of_single_readings_gets_its_floor_raised_once_heard_from(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    scheduler = made(stopped)
    consumers = listed(scheduler, 200)
    single, bundled = consumers[0], consumers[1]
    asked_single, asked_bundled = changes(single), changes(bundled)
    deliver(scheduler, single, 1, 1)
    deliver(scheduler, bundled, 1, 50)
    assert scheduler._refloor == {single.tenant}  # full bundles: as assumed, no change
    scheduler._share_prefetch()
    assert asked_single == [100] and asked_bundled == []  # 100,000 / 200 = 500 >= 100
    assert single.tenant not in scheduler._raised  # at its (new) floor


def test_backlogged_bundles_share_the_readings_budget_not_the_message_budget(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    scheduler = made(stopped)
    consumers = listed(scheduler, 200)
    flood = consumers[0]
    asked = changes(flood)
    for tag in range(1, 11):  # its 10th bundle fills the floor: backlogged
        deliver(scheduler, flood, tag, 50)
    assert scheduler.backlogged == {flood.tenant}
    scheduler._share_prefetch()
    # Alone: the message budget would grant 3,000 bundles (150,000 readings); the
    # readings budget grants 100,000 / 50 = 2,000.
    assert asked == [2000]
    assert flood.tenant in scheduler._raised
    assert sample("fairway_scheduler_buffered_readings") == 500  # the 10 bundles


def test_a_backlogged_tenants_bundles_growing_resizes_its_share(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    scheduler = made(stopped)
    consumers = listed(scheduler, 10)
    flood = consumers[0]
    asked = changes(flood)
    for tag in range(1, 101):  # single readings fill the floor of 100: backlogged
        deliver(scheduler, flood, tag, 1)
    scheduler._share_prefetch()
    assert asked == [3000]  # single readings: the message budget binds
    for tag in range(101, 141):  # then full bundles: the moving average climbs past 25 %
        deliver(scheduler, flood, tag, 50)
    flood.saturated = True  # still filling its prefetch
    scheduler._check_backlogged()
    assert asked[-1] < 100_000 / 40  # sized for what it sends now
    assert asked[-1] * flood.readings_each <= 100_000 + 50


def test_the_readings_budget_is_validated() -> None:
    with pytest.raises(SettingsError, match="FAIRWAY_SCHEDULER_BUFFER_READINGS"):
        Settings.from_env({"FAIRWAY_SCHEDULER_BUFFER_READINGS": "10"})
    assert Settings().scheduler_buffer_readings == 100_000


def test_a_floor_change_declined_during_a_recycle_is_tried_again(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    scheduler = made(stopped)
    single = listed(scheduler, 200)[0]
    single.channel = StubChannel()  # live
    declined: list[int] = []

    def busy(wanted: int) -> bool:  # its previous recycle is under way
        declined.append(wanted)
        return False

    single.change_prefetch = busy  # type: ignore[method-assign]
    deliver(scheduler, single, 1, 1)
    scheduler._share_prefetch()
    assert declined == [100] and scheduler._reshare_pending
    assert single.tenant in scheduler._refloor  # visited by the retry, though not raised
    asked = changes(single)
    scheduler._check_backlogged()  # the once-a-second look retries the pending re-share
    assert asked == [100] and not scheduler._reshare_pending
