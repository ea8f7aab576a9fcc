"""Express priority (scheduler/service.py): while light tenants are active (an express
batch in flight or ended less than ``express_hold_ms`` ago), the regular batches are
held to ``batch_beside_express`` readings (unset: 100 where that can act) and at most
``writers_beside_express`` are written at once, so the express write shares the database
with less of a flood."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from fairway.kernel.settings import Settings, SettingsError
from scheduler.service import Delivery, Scheduler
from scheduler.sink import NullSink
from scheduler.tenant_channel import TenantConsumer
from tests.unit.test_scheduler_bundles import bundle
from tests.unit.test_scheduler_settle import (
    sample,
    stopped,  # noqa: F401 - the fixture
    tenant_channel,
    write_time,  # noqa: F401 - the fixture
)

Submitted = list[tuple[int, bool]]  # (readings, express) of each batch handed to a writer


def recording(
    settings: Settings,
    stopped: list[Scheduler],  # noqa: F811
) -> tuple[Scheduler, Submitted, list[Any]]:
    """A scheduler whose writers only record their batches; ``calls[i]()`` writes batch i."""
    scheduler = Scheduler(settings, NullSink(), list_tenants=list)
    scheduler.call_soon = lambda callback: callback()  # type: ignore[method-assign]
    stopped.append(scheduler)
    submitted: Submitted = []
    calls: list[Any] = []

    def submit(
        fn: Any, batch: list[tuple[str, Delivery]], express: bool = False, *rest: Any
    ) -> None:
        submitted.append((sum(d.readings for _, d in batch), express))
        calls.append(lambda: fn(batch, express, *rest))

    scheduler._writers.submit = submit  # type: ignore[method-assign,assignment]
    return scheduler, submitted, calls


# Two writers, one of them held back while light tenants are active (a minute's hold:
# the tests end it by hand); full batches of 40 readings, no linger.
ONE_WRITER_BESIDE_EXPRESS = Settings(
    batch_size=40,
    batch_max=40,
    writers=2,
    writers_beside_express=1,
    express_readings=10,
    express_hold_ms=60_000,
    batch_linger_ms=0,
)


def flooding(scheduler: Scheduler) -> TenantConsumer:
    """A tenant that filled its prefetch (backlogged): the one a cap holds back."""
    flood, _ = tenant_channel("flood")
    scheduler._backlog_started(flood)
    return flood


def deliver(scheduler: Scheduler, consumer: TenantConsumer, tag: int, readings: int) -> None:
    method = SimpleNamespace(delivery_tag=tag, consumer_tag="c1")
    raw = bundle(consumer.tenant, *range(tag * 100, tag * 100 + readings))
    scheduler._on_message(consumer, method, raw, readings)  # type: ignore[arg-type]


def test_regular_batches_are_held_small_while_light_tenants_are_active(
    stopped: list[Scheduler],  # noqa: F811
    write_time: list[float],  # noqa: F811
) -> None:
    settings = Settings(
        batch_size=50,
        batch_max=1000,  # room to grow: a capped write that counted would double it
        writers=1,
        express_readings=10,
        batch_beside_express=50,
        express_hold_ms=60_000,
        batch_linger_ms=0,
    )
    scheduler, submitted, calls = recording(settings, stopped)
    scheduler.batch_limit.limit = 400  # as if grown by fast full writes
    flood = flooding(scheduler)
    quiet, quiet_channel = tenant_channel("quiet")
    for tag in range(1, 14):  # the first bundle goes at once, 480 readings wait
        deliver(scheduler, flood, tag, 40)
    assert submitted == [(40, False)]
    deliver(scheduler, quiet, 1, 1)  # the one writer is busy: express
    assert submitted[-1] == (1, True)
    calls[0]()  # the regular write ends while the express batch is in flight
    assert submitted[-1] == (40, False)  # one bundle: two would pass 50
    calls[1]()  # the express write ends; light tenants still count as active (the hold)
    assert quiet_channel.acks == [(1, True)]
    calls[2]()
    assert submitted[-1] == (40, False)
    scheduler._light_until = time.monotonic() - 1  # the hold is over
    calls[3]()
    assert submitted[-1] == (400, False)  # the grown limit again
    assert scheduler.batch_limit.limit == 400  # the capped writes never moved the limit
    calls[4]()  # a full write at the limit, fast (1 ms, write_time): it grows, as before
    assert scheduler.batch_limit.limit == 800


def test_fewer_regular_writers_while_an_express_batch_is_in_flight(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    settings = ONE_WRITER_BESIDE_EXPRESS
    scheduler, submitted, calls = recording(settings, stopped)
    flood = flooding(scheduler)
    quiet, _ = tenant_channel("quiet")
    for tag in range(1, 7):  # two to the two writers, four wait
        deliver(scheduler, flood, tag, 40)
    assert submitted == [(40, False), (40, False)]
    assert sample("fairway_scheduler_writers_allowed") == 2
    deliver(scheduler, quiet, 1, 1)
    assert submitted[-1] == (1, True)
    assert sample("fairway_scheduler_writers_allowed") == 1
    calls[0]()  # a writer frees while the express batch is in flight: it stays idle
    assert len(submitted) == 3 and scheduler.inflight == 1
    deliver(scheduler, quiet, 2, 1)  # one express batch at a time: it waits
    assert len(submitted) == 3
    calls[2]()  # the express write ends: the waiting light reading goes next, and no
    # second regular batch while light tenants are active (the hold)
    assert submitted[-1] == (1, True) and scheduler.inflight == 1
    calls[3]()
    assert len(submitted) == 4 and scheduler.inflight == 1
    scheduler._light_until = time.monotonic() - 1  # the hold is over
    deliver(scheduler, flood, 7, 40)
    assert submitted[-1] == (40, False) and scheduler.inflight == 2
    assert sample("fairway_scheduler_writers_allowed") == 2


def test_the_writers_held_back_get_batches_when_the_hold_ends(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    """Not only when the next write ends or a delivery comes: a timer wakes them."""
    settings = ONE_WRITER_BESIDE_EXPRESS
    scheduler, submitted, calls = recording(settings, stopped)
    flood = flooding(scheduler)
    quiet, _ = tenant_channel("quiet")
    for tag in range(1, 7):
        deliver(scheduler, flood, tag, 40)
    deliver(scheduler, quiet, 1, 1)
    calls[0]()  # a writer frees beside the express batch: held back
    calls[2]()  # the express write ends: the hold starts, its timer is set
    assert scheduler.inflight == 1 and scheduler._hold_timer is not None
    assert sample("fairway_scheduler_light_active") == 1
    scheduler._light_until = time.monotonic() - 1  # the hold is over when the timer fires
    scheduler._hold_expired()
    assert scheduler.inflight == 2 and scheduler._hold_timer is None
    assert submitted[-1] == (40, False)  # the writer held back took the flood's next batch
    assert sample("fairway_scheduler_light_active") == 0


def test_a_drain_uses_every_writer_whatever_the_hold(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    settings = ONE_WRITER_BESIDE_EXPRESS
    scheduler, _, _ = recording(settings, stopped)
    scheduler.express_busy = True
    assert scheduler._regular_writers() == 1
    scheduler.stopping = True
    assert scheduler._regular_writers() == 2


def test_the_express_priority_settings_are_bounded() -> None:
    for bad in (
        {"FAIRWAY_WRITERS_BESIDE_EXPRESS": "-1"},
        {"FAIRWAY_BATCH_BESIDE_EXPRESS": "-1"},
        {"FAIRWAY_EXPRESS_HOLD_MS": "-5"},
        # Settings that could never act are refused, not ignored.
        {"FAIRWAY_WRITERS_BESIDE_EXPRESS": "2", "FAIRWAY_WRITERS": "2"},
        {"FAIRWAY_BATCH_BESIDE_EXPRESS": "1000", "FAIRWAY_BATCH_MAX": "1000"},
        # Fixed batches of FAIRWAY_BATCH_SIZE (200): a cap of 500 never acts.
        {"FAIRWAY_BATCH_BESIDE_EXPRESS": "500", "FAIRWAY_WRITE_BUDGET_MS": "0"},
        {"FAIRWAY_BATCH_BESIDE_EXPRESS": "200", "FAIRWAY_EXPRESS_READINGS": "0"},
        {"FAIRWAY_WRITERS_BESIDE_EXPRESS": "1", "FAIRWAY_EXPRESS_READINGS": "0"},
    ):
        try:
            Settings.from_env(bad)
        except SettingsError as exc:
            assert next(iter(bad)) in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")


def test_express_priority_settings_that_act_are_accepted() -> None:
    Settings.from_env({"FAIRWAY_BATCH_BESIDE_EXPRESS": "200"})  # below FAIRWAY_BATCH_MAX
    Settings.from_env({"FAIRWAY_BATCH_BESIDE_EXPRESS": "100", "FAIRWAY_WRITE_BUDGET_MS": "0"})
    Settings.from_env({"FAIRWAY_WRITERS_BESIDE_EXPRESS": "1"})  # below FAIRWAY_WRITERS (2)


def test_a_cap_of_100_is_the_default() -> None:
    assert Settings().batch_beside_express is None  # unset: not the operator's choice
    assert Settings().regular_batch_cap == 100
    assert Settings.from_env({}).regular_batch_cap == 100
    # Fixed batches of 200 (no write budget): still above the cap, so it acts.
    assert Settings.from_env({"FAIRWAY_WRITE_BUDGET_MS": "0"}).regular_batch_cap == 100
    # Batches of 50 that grow to 1000: it acts once they pass 100.
    assert Settings.from_env({"FAIRWAY_BATCH_SIZE": "50"}).regular_batch_cap == 100


def test_the_default_cap_starts_and_stays_off_where_it_could_never_act() -> None:
    """Where no regular batch passes 100 readings, or there are no express batches, the
    default does nothing and the start check (for a cap the operator set) is silent."""
    for env in (
        {"FAIRWAY_BATCH_SIZE": "100", "FAIRWAY_BATCH_MAX": "100"},
        {"FAIRWAY_BATCH_SIZE": "40", "FAIRWAY_BATCH_MAX": "100"},
        {"FAIRWAY_BATCH_SIZE": "100", "FAIRWAY_WRITE_BUDGET_MS": "0"},  # fixed at 100
        {"FAIRWAY_EXPRESS_READINGS": "0"},
    ):
        assert Settings.from_env(env).regular_batch_cap == 0, env


def test_a_cap_the_operator_set_where_it_could_never_act_is_refused() -> None:
    """The same configurations, with the default's value set: refused, not ignored."""
    for env in (
        {"FAIRWAY_BATCH_SIZE": "100", "FAIRWAY_BATCH_MAX": "100"},
        {"FAIRWAY_BATCH_SIZE": "100", "FAIRWAY_WRITE_BUDGET_MS": "0"},
        {"FAIRWAY_EXPRESS_READINGS": "0"},
    ):
        with pytest.raises(SettingsError, match="FAIRWAY_BATCH_BESIDE_EXPRESS=100"):
            Settings.from_env({**env, "FAIRWAY_BATCH_BESIDE_EXPRESS": "100"})


def test_zero_turns_the_cap_off_wherever_it_is_set() -> None:
    assert Settings.from_env({"FAIRWAY_BATCH_BESIDE_EXPRESS": "0"}).regular_batch_cap == 0
    # 0 is "off", never "could not act": accepted beside express batches turned off.
    off = {"FAIRWAY_BATCH_BESIDE_EXPRESS": "0", "FAIRWAY_EXPRESS_READINGS": "0"}
    assert Settings.from_env(off).regular_batch_cap == 0
    # Handed to a child process (Settings.environ), set and unset both survive.
    assert Settings.from_env(Settings(batch_beside_express=0).environ()).regular_batch_cap == 0
    assert Settings.from_env(Settings().environ()).batch_beside_express is None


# One writer, full batches of 200 (the default size), a minute's hold, no linger: the
# express priority settings left at their defaults unless a test sets them.
def _one_writer(**settings: Any) -> Settings:
    return Settings(
        writers=1, express_readings=10, express_hold_ms=60_000, batch_linger_ms=0, **settings
    )


def _regular_batch_beside_express(
    settings: Settings,
    stopped: list[Scheduler],  # noqa: F811
    backlogged: bool = True,
) -> tuple[int, float]:
    """The readings of the regular batch that follows the first express batch, and the
    light-active gauge then: a flood's 40-reading bundles wait (its tenant backlogged,
    unless not ``backlogged``), a quiet reading goes express, the one regular write ends."""
    scheduler, submitted, calls = recording(settings, stopped)
    flood = flooding(scheduler) if backlogged else tenant_channel("flood")[0]
    quiet, _ = tenant_channel("quiet")
    for tag in range(1, 14):  # the first bundle goes at once, 480 readings wait
        deliver(scheduler, flood, tag, 40)
    deliver(scheduler, quiet, 1, 1)
    assert submitted[-1] == (1, True)
    calls[0]()  # the regular write ends while the express batch is in flight
    readings, express = submitted[-1]
    assert not express
    return readings, sample("fairway_scheduler_light_active")


def test_the_default_cap_holds_regular_batches_to_100_beside_express(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    assert _regular_batch_beside_express(_one_writer(), stopped) == (80, 1)  # two bundles


def test_a_cap_of_0_leaves_regular_batches_whole_beside_express(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    settings = _one_writer(batch_beside_express=0)
    assert _regular_batch_beside_express(settings, stopped) == (200, 0)  # five bundles


def test_the_default_cap_does_nothing_where_batches_never_pass_it(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    settings = _one_writer(batch_size=100, batch_max=100)
    assert _regular_batch_beside_express(settings, stopped) == (80, 0)  # not held back


def test_the_gauge_reads_0_while_the_limit_is_at_or_below_the_cap(
    stopped: list[Scheduler],  # noqa: F811
    write_time: list[float],  # noqa: F811
) -> None:
    """A write budget that shrank the limit to the cap (or below) leaves nothing to hold
    back: the light-active gauge says so, as the cap's own use does."""
    scheduler, submitted, calls = recording(_one_writer(), stopped)
    flood = flooding(scheduler)
    quiet, _ = tenant_channel("quiet")
    for tag in range(1, 14):
        deliver(scheduler, flood, tag, 40)
    deliver(scheduler, quiet, 1, 1)  # express: light tenants active beside the flood
    assert submitted[-1] == (1, True)
    assert sample("fairway_scheduler_light_active") == 1  # limit 200, cap 100
    for limit, active in ((100, 0), (60, 0), (101, 1)):
        scheduler.batch_limit.limit = limit  # as if shrunk by slow writes
        assert sample("fairway_scheduler_light_active") == active, limit
    scheduler.batch_limit.limit = 100
    calls[0]()  # the regular write ends: the next batch is the limit's, not the cap's
    assert submitted[-1] == (80, False)
    assert sample("fairway_scheduler_light_active") == 0


def test_a_capped_write_over_the_budget_still_shrinks_the_limit(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    """Capped writes never grow the limit, but one slower than the budget shrinks it, as
    any slow write does."""
    settings = Settings(
        batch_size=50,
        batch_max=1000,
        writers=1,
        express_readings=10,
        batch_beside_express=50,
        express_hold_ms=60_000,
        batch_linger_ms=0,
        write_budget_ms=100,
    )
    scheduler, submitted, calls = recording(settings, stopped)
    scheduler.batch_limit.limit = 400
    slow = scheduler.sink.write

    def over_budget(bodies: Any) -> Any:
        time.sleep(0.15)
        return slow(bodies)

    scheduler.sink.write = over_budget  # type: ignore[method-assign]
    flood = flooding(scheduler)
    quiet, _ = tenant_channel("quiet")
    for tag in range(1, 14):
        deliver(scheduler, flood, tag, 40)
    deliver(scheduler, quiet, 1, 1)  # express: light tenants active from here
    calls[0]()  # the first regular write (before the hold): slow, uncapped
    limit = scheduler.batch_limit.limit
    assert limit < 400
    assert submitted[2] == (40, False)  # capped: one bundle
    calls[2]()  # a capped write, slow too
    assert scheduler.batch_limit.limit < limit


def test_the_cap_leaves_batches_whole_while_no_tenant_is_backlogged(
    stopped: list[Scheduler],  # noqa: F811
) -> None:
    """A drain the relay paces: every tenant light, express batches beside regular ones
    of light tenants too. Nothing to protect them from; a cap would only make each
    reading's write dearer (end_to_end's drains: batches of ~80-150 against ~200-370)."""
    for settings in (_one_writer(), _one_writer(batch_beside_express=100)):
        regular = _regular_batch_beside_express(settings, stopped, backlogged=False)
        assert regular == (200, 0)
