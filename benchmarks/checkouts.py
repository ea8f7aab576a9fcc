"""Before/after drains: one Fairway process from either checkout, timed on its own counter.

Shared by ``relay_drain`` and ``scheduler_drain``: start the process from another
checkout, wait for its first counted reading, time the drain to ``expected`` (time and
CPU interpolated between 0.1 s polls), optionally under py-spy, and alternate the builds
round by round.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import cpu_s, r, say
from fairway.kernel.settings import Settings

Build = tuple[str, str | None]  # (name, checkout to run from; None: this one)


def builds(pythonpath: str | None) -> list[Build]:
    """This checkout alone, or ``pythonpath``'s ("before") and this one."""
    return [("before", pythonpath), ("this", None)] if pythonpath else [("this", None)]


@contextmanager
def start_build(
    command: list[str], settings: Settings, label: str, pythonpath: str | None
) -> Iterator[Any]:
    """``python -m fairway <command>`` run from ``pythonpath`` (else this checkout)."""
    with ExitStack() as stack:
        # The child imports from its working directory first: the other build's checkout.
        here = os.getcwd()
        os.chdir(pythonpath or common.ROOT)
        try:
            proc = stack.enter_context(common.fairway_process(command, settings, label))
        finally:
            os.chdir(here)
        yield proc


@contextmanager
def py_spy(pid: int, directory: str | None, name: str) -> Iterator[None]:
    """py-spy recording ``pid`` (GIL holder, 250 Hz, raw) into ``directory/name`` for the
    block; nothing when ``directory`` is None."""
    if directory is None:
        yield
        return
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--gil",
            "-r",
            "250",
            "-p",
            str(pid),
            "-o",
            str(Path(directory) / name),
            "-f",
            "raw",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(2)
        spy.wait(30)


@dataclass
class Window:
    """A drain's timed window: count, time and CPU at its start and (interpolated) end."""

    n0: float
    t0: float
    c0: float
    t1: float = 0.0
    c1: float = 0.0

    def figures(self, expected: int) -> dict[str, Any]:
        """Readings timed, seconds, rate and CPU per reading."""
        readings = expected - self.n0
        return {
            "readings_timed": int(readings),
            "seconds": r(self.t1 - self.t0, 2),
            "rate": r(readings / (self.t1 - self.t0)),
            "cpu_us_per_reading": r((self.c1 - self.c0) * 1e6 / readings, 2),
        }


def first_count(proc: Any, counter: Callable[[Any], float], timeout: float, what: str) -> Window:
    """Wait (at most ``timeout`` s) for ``counter`` to pass 0; the window opens there."""
    start = time.monotonic()
    n0 = 0.0
    while n0 <= 0:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: nothing counted in {timeout} s (is it consuming?)")
        time.sleep(0.02)
        n0 = counter(proc)
    return Window(n0, time.monotonic(), cpu_s(proc.pid))


def time_drain(
    proc: Any, counter: Callable[[Any], float], window: Window, expected: int, timeout: float
) -> None:
    """Poll until ``counter`` reaches ``expected``; close ``window`` there (interpolated)."""
    prev_t, prev_n, prev_c = window.t0, window.n0, window.c0
    while True:
        time.sleep(0.1)
        now, n, c = time.monotonic(), counter(proc), cpu_s(proc.pid)
        if n >= expected:
            frac = (expected - prev_n) / max(n - prev_n, 1e-9)
            window.t1 = prev_t + (now - prev_t) * frac
            window.c1 = prev_c + (c - prev_c) * frac
            return
        if now - window.t0 > timeout:
            raise TimeoutError(f"{n} of {expected} after {timeout} s")
        prev_t, prev_n, prev_c = now, n, c


def alternate(
    each: list[Build],
    rounds: int,
    run: Callable[[str, str | None, int], dict[str, Any]],
    detail: Callable[[dict[str, Any]], str],
) -> list[dict[str, Any]]:
    """``run(build, pythonpath, round)`` for each build, order flipped every other round,
    with the load average before and after; CPU, rate and ``detail(result)`` said after each."""
    results: list[dict[str, Any]] = []
    for i in range(rounds):
        for build, path in each if i % 2 == 0 else each[::-1]:
            load = os.getloadavg()[0]
            res = run(build, path, i)
            res["load_before"] = r(load, 2)
            res["load_after"] = r(os.getloadavg()[0], 2)
            say(
                f"{build}: {res['cpu_us_per_reading']} us/reading,"
                f" {res['rate']:.0f} readings/s{detail(res)}"
            )
            results.append(res)
    return results


def medians(results: list[dict[str, Any]], each: list[Build], key: str) -> dict[str, float]:
    """The median of ``key`` per build."""
    return {b: statistics.median(x[key] for x in results if x["build"] == b) for b, _ in each}
