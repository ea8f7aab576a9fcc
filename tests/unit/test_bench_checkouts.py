"""The shared drain timing of ``relay_drain`` and ``scheduler_drain``."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from benchmarks import checkouts


def test_first_count_is_bounded_by_the_timeout() -> None:
    proc = SimpleNamespace(pid=os.getpid())
    with pytest.raises(TimeoutError, match=r"relay this: nothing counted in 0\.1 s"):
        checkouts.first_count(proc, lambda _: 0.0, 0.1, "relay this")


def test_time_drain_interpolates_the_end() -> None:
    proc = SimpleNamespace(pid=os.getpid())
    counts = iter([10.0, 50.0, 130.0])
    window = checkouts.first_count(proc, lambda _: next(counts), 5.0, "x")
    checkouts.time_drain(proc, lambda _: next(counts), window, 100, 5.0)
    assert window.n0 == 10.0
    assert window.t0 < window.t1
    assert window.figures(100)["readings_timed"] == 90


def test_alternate_flips_the_order_every_other_round() -> None:
    seen: list[tuple[str, int]] = []

    def run(build: str, path: str | None, i: int) -> dict[str, object]:
        seen.append((build, i))
        return {"build": build, "v": i, "cpu_us_per_reading": 1.0, "rate": 2.0}

    res = checkouts.alternate(checkouts.builds("../x"), 2, run, lambda r: "")
    assert seen == [("before", 0), ("this", 0), ("this", 1), ("before", 1)]
    assert all("load_before" in r and "load_after" in r for r in res)
    assert checkouts.medians(res, checkouts.builds("../x"), "v") == {"before": 0.5, "this": 0.5}
