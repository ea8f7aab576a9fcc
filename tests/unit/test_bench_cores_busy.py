"""``end_to_end``'s cores busy over a drain and the machine's CPU from ``/proc/stat``."""

from __future__ import annotations

from pathlib import Path
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


def test_proc_stat_counts_idle_and_iowait_as_idle_steal_apart_and_the_rest_as_busy() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    text = "cpu  100 5 50 400 20 3 2 9 7 0\ncpu0 50 2 25 200 10 1 1 0 0 0\n"
    seconds = end_to_end.proc_stat_seconds(text)
    assert seconds == pytest.approx(
        {"busy": 160 / CLOCK_TICKS, "idle": 420 / CLOCK_TICKS, "steal": 9 / CLOCK_TICKS}
    )


def test_proc_stat_of_an_old_kernel_without_steal_has_none() -> None:
    assert end_to_end.proc_stat_seconds("cpu  100 5 50 400\n")["steal"] == 0.0


def test_machine_cores_are_seconds_over_wall_seconds_and_zero_over_no_time() -> None:
    start = {"busy": 10.0, "idle": 4.0, "steal": 1.0}
    end = {"busy": 13.5, "idle": 4.4, "steal": 1.1}
    assert end_to_end.machine_cores(start, end, 2.0) == {"busy": 1.75, "idle": 0.2, "steal": 0.05}
    assert end_to_end.machine_cores(start, end, 0.0) == {"busy": 0.0, "idle": 0.0, "steal": 0.0}


def test_scenario_medians_keep_one_drains_shape() -> None:
    drains = [
        {"machine_cores": {"busy": 1.9, "idle": 0.1}},
        {"machine_cores": {"busy": 1.7, "idle": 0.3, "steal": 0.0}},
        {"machine_cores": {"busy": 2.0, "idle": 0.0, "steal": 0.0}},
    ]
    assert end_to_end.median_cores(drains, "machine_cores") == {"busy": 1.9, "idle": 0.1}


def test_scenarios_pick_the_drains() -> None:
    args = SimpleNamespace(batch_documents="on", layouts=["maintained"], scenarios=["single"])
    assert end_to_end.drain_arms(args) == [("single", "maintained", True)]


def test_schedstat_wait_is_the_second_field_in_seconds() -> None:
    assert end_to_end.schedstat_wait_s("237681555 53504766 570\n") == pytest.approx(0.0535, 1e-3)
    assert end_to_end.schedstat_wait_s("") == 0.0


def test_task_start_is_field_22_after_the_command() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice num_threads itrealvalue starttime ...
    stat = "4242 (post gres: a) b) S 1 2 3 0 -1 4194304 5 0 0 0 7 8 0 0 20 0 1 0 987654 1 2\n"
    assert end_to_end.task_start_ticks(stat) == 987654


def thread(proc: Path, pid: int, tid: int, start: int, wait_ns: int) -> None:
    """A fake ``/proc/<pid>/task/<tid>`` with its start time and run-queue wait."""
    task = proc / str(pid) / "task" / str(tid)
    task.mkdir(parents=True, exist_ok=True)
    fields = " ".join(["S"] + ["0"] * 18 + [str(start)] + ["0"] * 5)
    (task / "stat").write_text(f"{tid} (postgres) {fields}\n")
    (task / "schedstat").write_text(f"1000 {wait_ns} 3\n")


def gone(proc: Path, pid: int, tid: int | None = None) -> None:
    """Remove a fake thread, or a whole fake process."""
    top = proc / str(pid) if tid is None else proc / str(pid) / "task" / str(tid)
    for path in sorted(top.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    top.rmdir()


def test_runqueue_waits_keep_threads_and_processes_gone_between_readings(tmp_path: Path) -> None:
    for pid in (100, 200):  # two backends with two threads each, 1 s of wait apiece
        for tid in (pid, pid + 1):
            thread(tmp_path, pid, tid, start=50, wait_ns=10**9)
    waits = end_to_end.RunqueueWaits(tmp_path)
    start = waits.seconds([100, 200])
    thread(tmp_path, 100, 100, start=50, wait_ns=3 * 10**9)  # 2 s more, then goes
    thread(tmp_path, 200, 201, start=50, wait_ns=2 * 10**9)  # 1 s more
    gone(tmp_path, 100, 101)  # a thread gone: its last value stays
    gone(tmp_path, 200, 200)
    middle = waits.seconds([100, 200])
    gone(tmp_path, 100)  # the whole backend gone before the end
    thread(tmp_path, 300, 300, start=90, wait_ns=5 * 10**8)  # a new backend
    end = waits.seconds([200, 300])
    assert start == pytest.approx(4.0)
    assert middle == pytest.approx(7.0)
    assert end - start == pytest.approx(3.5)


def test_runqueue_waits_count_a_reused_pid_as_another_thread(tmp_path: Path) -> None:
    thread(tmp_path, 100, 100, start=50, wait_ns=2 * 10**9)
    waits = end_to_end.RunqueueWaits(tmp_path)
    start = waits.seconds([100])
    gone(tmp_path, 100)
    thread(tmp_path, 100, 100, start=70, wait_ns=10**8)  # pid reused by a newer process
    assert waits.seconds([100]) - start == pytest.approx(0.1)


def test_runqueue_wait_of_a_process_never_seen_is_zero(tmp_path: Path) -> None:
    assert end_to_end.RunqueueWaits(tmp_path).seconds([2**22 + 12345]) == 0.0
    assert end_to_end.RunqueueWaits().seconds([2**22 + 12345]) == 0.0
