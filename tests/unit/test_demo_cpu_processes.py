"""The demo's cpu worker runs as many pool processes as every process it starts is told
(FAIRWAY_JOBS_CPU_PROCESSES): fair dispatch releases jobs to fit what really runs."""

from __future__ import annotations

import pytest

from fairway.devtools.demo import Demo, DemoOptions
from fairway.kernel.settings import Settings, SettingsError


def test_by_default_the_demo_runs_the_declared_two_processes() -> None:
    demo = Demo(Settings.from_env({}), DemoOptions())
    assert demo.cpu_processes == 2
    assert demo.settings.environ()["FAIRWAY_JOBS_CPU_PROCESSES"] == "2"


def test_the_demo_runs_what_the_environment_declares() -> None:
    demo = Demo(Settings.from_env({"FAIRWAY_JOBS_CPU_PROCESSES": "3"}), DemoOptions())
    assert demo.cpu_processes == 3


def test_a_chosen_count_is_declared_to_every_process() -> None:
    demo = Demo(Settings.from_env({}), DemoOptions(cpu_workers=4))
    assert demo.cpu_processes == 4
    assert demo.settings.environ()["FAIRWAY_JOBS_CPU_PROCESSES"] == "4"


def test_one_process_keeps_no_reserve_unless_one_is_set() -> None:
    demo = Demo(Settings.from_env({}), DemoOptions(cpu_workers=1))
    assert (demo.cpu_processes, demo.settings.reserved_processes) == (1, 0)
    with pytest.raises(SettingsError, match="FAIRWAY_JOBS_RESERVED_PROCESSES"):
        reserve = Settings.from_env({"FAIRWAY_JOBS_RESERVED_PROCESSES": "1"})
        Demo(reserve, DemoOptions(cpu_workers=1))
