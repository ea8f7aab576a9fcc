"""The broker's one-hop ceiling: RabbitMQ PerfTest driven from a benchmark (issue 11).

``scripts/perftest.sh`` installs the pinned PerfTest release under ``.services/perftest``
(Maven resolves its dependencies) and execs it, so the child's pid is PerfTest's JVM.
PerfTest prints one line per second (``id: ..., time 2.002 s, sent: 19158 msg/s,
confirmed: ..., nacked: ..., received: 18783 msg/s, ...``) and averages at the end;
:func:`run` reads the lines as they come and calls ``meter`` (CPU seconds so far per
process) at the first and the last of them, so the CPU and the message count cover the
same window: the JVM's start and the first second's ramp are left out.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "perftest.sh"
INSTALL_HINT = (
    "PerfTest is installed by `scripts/perftest.sh install` (or `make perftest`): it needs"
    " java >= 11 and mvn (apt-get install openjdk-17-jre-headless maven) and Maven Central"
)

_INTERVAL = re.compile(
    r"time:? (?P<t>\d+(?:\.\d+)?) ?s, sent: (?P<sent>\d+) msg/s,"
    r" confirmed: (?P<confirmed>\d+) msg/s, nacked: (?P<nacked>\d+) msg/s,"
    r" received: (?P<received>\d+) msg/s"
)
_AVERAGE = re.compile(r"(?P<what>sending|receiving) rate avg: (?P<rate>\d+) msg/s")


@dataclass(frozen=True)
class Interval:
    """One of PerfTest's per-second lines: when (s since its start) and the rates."""

    t: float
    sent: int
    confirmed: int
    nacked: int
    received: int


def parse_interval(line: str) -> Interval | None:
    """The interval a PerfTest output line reports, or None for any other line."""
    m = _INTERVAL.search(line)
    if m is None:
        return None
    return Interval(
        float(m["t"]), int(m["sent"]), int(m["confirmed"]), int(m["nacked"]), int(m["received"])
    )


def parse_averages(text: str) -> dict[str, int]:
    """PerfTest's closing averages: ``{"sending": msg/s, "receiving": msg/s}``."""
    return {m["what"]: int(m["rate"]) for m in _AVERAGE.finditer(text)}


def window(intervals: list[Interval]) -> dict[str, float]:
    """Messages received, confirmed and nacked after the first interval line, up to the
    last: each line's rate times the time since the line before."""
    totals = {"seconds": 0.0, "received": 0.0, "confirmed": 0.0, "nacked": 0.0}
    for before, line in itertools.pairwise(intervals):
        dt = line.t - before.t
        totals["seconds"] += dt
        totals["received"] += line.received * dt
        totals["confirmed"] += line.confirmed * dt
        totals["nacked"] += line.nacked * dt
    return totals


def install() -> None:
    """Install PerfTest with the project's script (nothing to do if it is there)."""
    try:
        subprocess.run([str(SCRIPT), "install"], check=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"PerfTest could not be installed ({exc}). {INSTALL_HINT}") from exc


def arguments(
    uri: str,
    queue: str,
    size: int,
    seconds: float,
    confirm: int,
    qos: int,
    multi_ack: int,
    *,
    producers: int = 1,
    consumers: int = 1,
    count: int = 0,
) -> list[str]:
    """``producers`` and ``consumers`` (one each by default) on ``queue``: persistent
    messages of ``size`` bytes, at most ``confirm`` unconfirmed, prefetch ``qos``, a
    multiple ack every ``multi_ack``; for ``seconds``, or, with ``count``, until each
    producer has published and each consumer received that many messages. The queue is
    declared like Fairway's (durable classic, bounded, reject-publish) and kept."""
    if count:
        until = ["--pmessages", str(count), "--cmessages", str(count)]
    else:
        # One second more than the window: the first line only opens the window.
        until = ["--time", str(round(seconds) + 1)]
    return [
        *("--uri", uri, "--queue", queue),
        *("--producers", str(producers), "--consumers", str(consumers)),
        *("--auto-delete", "false", "--flag", "persistent", "--size", str(size)),
        *("--queue-args", "x-max-length=10000000,x-overflow=reject-publish"),
        *("--confirm", str(confirm), "--qos", str(qos), "--multi-ack-every", str(multi_ack)),
        *until,
        *("--interval", "1"),
    ]


def run(
    args: list[str], meter: Callable[[int], dict[str, float]], whole: bool = False
) -> dict[str, Any]:
    """Run PerfTest with ``args``; ``meter(jvm_pid)`` is read at the window's two ends:
    the first and last per-second lines, or with ``whole`` (runs of a message count,
    whose last line is not their end) the start and the exit of the JVM.

    Returns the window's message counts (from the lines), its rates, the CPU seconds
    ``meter`` saw spent in it per key, PerfTest's own averages, and its output lines.
    """
    install()
    proc = subprocess.Popen(
        [str(SCRIPT), "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert proc.stdout is not None
    lines: list[str] = []
    intervals: list[Interval] = []
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    t_first = t_last = 0.0
    if whole:
        first, t_first = meter(proc.pid), time.monotonic()
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        interval = parse_interval(line)
        if interval is None:
            continue
        intervals.append(interval)
        if whole:
            continue
        if not first:
            first, t_first = meter(proc.pid), time.monotonic()
        else:
            last, t_last = meter(proc.pid), time.monotonic()
    if whole:
        # The JVM has closed its output: it is exiting, its CPU is nearly all spent.
        last, t_last = meter(proc.pid), time.monotonic()
    code = proc.wait()
    output = "\n".join(lines)
    if code != 0 or not last:
        raise RuntimeError(f"PerfTest failed (exit {code}):\n{output[-3000:]}")
    counted = window(intervals)
    return {
        **counted,
        "wall_seconds": t_last - t_first,
        "rate": counted["received"] / counted["seconds"] if counted["seconds"] else 0.0,
        "cpu_seconds": {k: last[k] - first[k] for k in first},
        "averages": parse_averages(output),
        "output": lines,
    }
