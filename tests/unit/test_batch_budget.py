"""The write batch sized by a write-time budget (scheduler/batch_budget.py), alone and in
the scheduler on stub channels."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from fairway.kernel.settings import Settings, SettingsError
from scheduler.batch_budget import BUDGET_FILL, BatchBudget
from scheduler.service import Delivery, Scheduler
from scheduler.sink import NullSink
from tests.unit.test_scheduler_bundles import bundle
from tests.unit.test_scheduler_settle import (
    sample,
    stopped,  # noqa: F401 - the fixture
    tenant_channel,
    write_time,  # noqa: F401 - the fixture
)


def test_fast_full_batches_grow_the_limit_at_most_doubling_up_to_the_ceiling() -> None:
    budget = BatchBudget(200, 1000, 0.1)
    # 200 readings in 10 ms: 80 ms would hold 1,600; doubling caps the step at 400.
    assert budget.observe(200, 0.010) == 400
    assert budget.observe(400, 0.020) == 800
    assert budget.observe(800, 0.040) == 1000  # the ceiling
    assert budget.observe(1000, 0.001) == 1000


def test_growth_stops_where_the_measured_time_per_reading_fills_the_budget() -> None:
    budget = BatchBudget(200, 1000, 0.1)
    # 200 readings in 40 ms: 0.2 ms each; 80 % of 100 ms holds 400.
    assert budget.observe(200, 0.040) == int(0.1 * BUDGET_FILL / 0.0002)
    assert budget.observe(400, 0.080) == 400  # at the fill line: stays


def test_a_partial_batch_never_grows_the_limit() -> None:
    budget = BatchBudget(200, 1000, 0.1)
    assert budget.observe(50, 0.001, full=False) == 200


def test_a_slow_write_shrinks_to_what_fits_at_most_halving_never_below_the_floor() -> None:
    budget = BatchBudget(100, 1000, 0.1)
    budget.limit = 1000
    assert budget.observe(1000, 0.125) == 800  # 1,000 in 125 ms: 800 fit 100 ms
    assert budget.observe(800, 1.0) == 400  # would fit 80: halved
    assert budget.observe(400, 10.0) == 200
    assert budget.observe(200, 10.0) == 100  # the floor
    assert budget.observe(100, 10.0) == 100
    assert budget.observe(10, 1.0, full=False) == 100  # slow partial batches too


def test_budget_zero_or_a_ceiling_at_the_floor_keeps_batches_fixed() -> None:
    for budget in (
        BatchBudget(200, 1000, 0.0),
        BatchBudget(200, 200, 0.1),
        BatchBudget(200, 50, 0.1),
    ):
        assert not budget.adaptive
        assert budget.observe(200, 0.0001) == 200
        assert budget.observe(200, 100.0) == 200


def test_the_settings_are_bounded() -> None:
    s = Settings()
    assert (s.batch_size, s.batch_max, s.write_budget_ms) == (200, 1000, 100.0)
    with pytest.raises(SettingsError, match="FAIRWAY_BATCH_MAX='0' must be between 1 and 10000"):
        Settings.from_env({"FAIRWAY_BATCH_MAX": "0"})
    with pytest.raises(SettingsError, match="FAIRWAY_WRITE_BUDGET_MS='-1' must be between"):
        Settings.from_env({"FAIRWAY_WRITE_BUDGET_MS": "-1"})
    with pytest.raises(SettingsError, match="FAIRWAY_WRITE_BUDGET_MS='fast' is not a valid"):
        Settings.from_env({"FAIRWAY_WRITE_BUDGET_MS": "fast"})


def test_the_scheduler_grows_its_batches_on_fast_full_writes_and_shows_the_limit(
    stopped: list[Scheduler],  # noqa: F811
    write_time: list[float],  # noqa: F811
) -> None:
    batches: list[int] = []

    class Recording(NullSink):
        def write(self, bodies: list[bytes]) -> Any:
            batches.append(len(bodies))
            return super().write(bodies)

    settings = Settings(batch_size=100, batch_max=400, writers=1, batch_linger_ms=60_000)
    scheduler = Scheduler(settings, Recording(), list_tenants=list)
    scheduler.call_soon = lambda callback: callback()  # type: ignore[method-assign]
    stopped.append(scheduler)
    scheduler._writers.submit = lambda fn, *a: fn(*a)  # type: ignore[method-assign]
    acme, _channel = tenant_channel("acme")
    assert sample("fairway_scheduler_batch_limit") == 100
    for tag in range(1, 41):  # bundles of 10 readings, 400 in all
        method = SimpleNamespace(delivery_tag=tag, consumer_tag="c1")
        scheduler._on_message(acme, method, bundle("acme", *range(tag * 10, tag * 10 + 10)), 10)  # type: ignore[arg-type]
    # Each write takes 1 ms (write_time): every full batch doubles the next one, up to 400.
    assert batches == [10, 20]  # 100 then 200 readings; the last 100 linger (limit 400)
    assert scheduler.batch_limit.limit == 400
    assert sample("fairway_scheduler_batch_limit") == 400


def test_an_express_batch_never_moves_the_limit(
    stopped: list[Scheduler],  # noqa: F811
    write_time: list[float],  # noqa: F811
) -> None:
    settings = Settings(batch_size=100, writers=1, batch_linger_ms=60_000)
    scheduler = Scheduler(settings, NullSink(), list_tenants=list)
    scheduler.call_soon = lambda callback: callback()  # type: ignore[method-assign]
    stopped.append(scheduler)
    acme, _channel = tenant_channel("acme")

    def batch(first: int) -> list[tuple[str, Delivery]]:
        out = []
        for tag in range(first, first + 10):
            acme.delivered(tag, "c1")
            body = bundle("acme", *range(tag * 10, tag * 10 + 10))
            out.append(("acme", Delivery(acme, tag, body, "c1", 10)))
        return out

    scheduler.express_busy = True
    scheduler._write(batch(1), express=True)  # 100 readings at once, but express
    assert scheduler.batch_limit.limit == 100
    scheduler.inflight = 1
    scheduler._write(batch(11), False, True)  # the same, a regular full batch
    assert scheduler.batch_limit.limit == 200
