"""``end_to_end``'s cores busy over a drain and the machine's CPU from ``/proc/stat``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks import end_to_end
from benchmarks.common import CLOCK_TICKS


def test_cores_busy_is_cpu_seconds_over_wall_seconds_per_process_and_summed() -> None:
    start = {"relay": 1.0, "scheduler": 2.0, "broker": 10.0, "database": 5.0}
    end = {"relay": 3.0, "scheduler": 3.5, "broker": 12.0, "database": 8.0}
    busy = end_to_end.cores_busy(start, end, 4.0)
    assert busy == {
        "total": 2.125,
        "relay": 0.5,
        "scheduler": 0.375,
        "broker": 0.5,
        "database": 0.75,
    }


def test_cores_busy_of_no_time_is_zero() -> None:
    assert end_to_end.cores_busy({"relay": 1.0}, {"relay": 1.0}, 0.0) == {
        "total": 0.0,
        "relay": 0.0,
    }


def test_proc_stat_counts_idle_and_iowait_as_idle_and_the_rest_as_busy() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    text = "cpu  100 5 50 400 20 3 2 0 7 0\ncpu0 50 2 25 200 10 1 1 0 0 0\n"
    busy, idle = end_to_end.proc_stat_seconds(text)
    assert busy == pytest.approx(160 / CLOCK_TICKS)
    assert idle == pytest.approx(420 / CLOCK_TICKS)


def test_scenarios_pick_the_drains() -> None:
    args = SimpleNamespace(batch_documents="on", layouts=["maintained"], scenarios=["single"])
    assert end_to_end.drain_arms(args) == [("single", "maintained", True)]


def test_schedstat_wait_is_the_second_field_in_seconds() -> None:
    assert end_to_end.schedstat_wait_s("237681555 53504766 570\n") == pytest.approx(0.0535, 1e-3)
    assert end_to_end.schedstat_wait_s("") == 0.0


def test_runqueue_wait_of_a_process_gone_is_zero() -> None:
    assert end_to_end.runqueue_wait_s([2**22 + 12345]) == 0.0
