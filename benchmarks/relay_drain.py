"""The relay alone: CPU per reading draining pre-filled tenant ingest queues.

Cheaper and steadier than ``end_to_end --only-drain`` when only the relay changes: no
scheduler, no database writes. The fleet is ``end_to_end``'s (10 tenants x 5 devices,
registered); each drain fills the ``ingest.<tenant>`` queues through ``telemetry`` with
the simulator (``--batch`` readings per message: 1 as ``end_to_end``'s single drain, 10
as its batch10), then ``python -m fairway relay`` drains them into the tenant queues
(nobody consumes those). Its CPU (user + system, ``/proc``) is counted from its first
accepted reading to the last (interpolated between 0.1 s polls of
``fairway_relay_accepted_total``), per reading accepted after the first poll. With
``--profile DIR`` py-spy records the relay (GIL holder, 250 Hz) over the same window:
raw collapsed stacks, one file per round.

``--pythonpath`` runs the relay from another checkout (``main``'s), alternating with this
one round by round: before/after in one run. The broker is not charged here.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import cpu_s, r, say
from benchmarks.end_to_end import DEVICES_PER_TENANT, TENANTS, fill
from fairway.devtools import simulator

NAME = "relay_drain"
ACCEPTED = "fairway_relay_accepted_total"
REJECTED = "fairway_relay_rejected_total"


def accepted(proc: Any) -> float:
    """Readings the relay has had confirmed into tenant queues."""
    return sum(proc.metrics(ACCEPTED).get(ACCEPTED, {}).values())


def py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` (GIL holder, 250 Hz) into ``out`` until interrupted."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--gil",
            "-r",
            "250",
            "-p",
            str(pid),
            "-o",
            str(out),
            "-f",
            "raw",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def drain(args: Any, build: str, pythonpath: str | None, round_no: int) -> dict[str, Any]:
    """One drain of fresh ingest queues by one relay build."""
    with common.bench_env(f"bench-rd-{build}") as env:
        by_tenant = {t: simulator.device_ids(t, DEVICES_PER_TENANT) for t in TENANTS}
        for tenant, devices in by_tenant.items():
            env.tenant(tenant)
            for device in devices:
                env.device(tenant, device)
        generator = fill(env, by_tenant, args.readings, args.batch)
        expected = generator["readings"]
        # The child imports from its working directory first: the other build's checkout.
        here = os.getcwd()
        os.chdir(pythonpath or common.ROOT)
        try:
            ctx = common.fairway_process(["relay"], env.settings, f"{NAME}-{build}")
            proc = ctx.__enter__()
        finally:
            os.chdir(here)
        spy = None
        try:
            proc.wait_ready(timeout=60)
            n0 = 0.0
            while n0 <= 0:
                time.sleep(0.02)
                n0 = accepted(proc)
            t0, c0 = time.monotonic(), cpu_s(proc.pid)
            if args.profile:
                spy = py_spy(
                    proc.pid, Path(args.profile) / f"{build}-b{args.batch}-r{round_no}.txt"
                )
            prev_t, prev_n, prev_c = t0, n0, c0
            while True:
                time.sleep(0.1)
                now, n, c = time.monotonic(), accepted(proc), cpu_s(proc.pid)
                if n >= expected:
                    frac = (expected - prev_n) / max(n - prev_n, 1e-9)
                    t1 = prev_t + (now - prev_t) * frac
                    c1 = prev_c + (c - prev_c) * frac
                    break
                if now - t0 > args.timeout:
                    raise TimeoutError(f"{n} of {expected} after {args.timeout} s")
                prev_t, prev_n, prev_c = now, n, c
            refused = sum(proc.metrics(REJECTED).get(REJECTED, {}).values())
            rss = proc.status().get("VmHWM", 0) / 1024
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            ctx.__exit__(None, None, None)
    readings = expected - n0
    return {
        "build": build,
        "messages": generator["messages"],
        "readings_timed": int(readings),
        "seconds": r(t1 - t0, 2),
        "rate": r(readings / (t1 - t0)),
        "cpu_us_per_reading": r((c1 - c0) * 1e6 / readings, 2),
        "refused": int(refused),
        "rss_mb": r(rss),
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; alternate the builds for ``--rounds`` rounds."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=None, help="per drain (30,000 x scale)")
    p.add_argument("--batch", type=int, default=1, help="readings per device message")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pythonpath", default=None, help="the before build's checkout (run there)")
    p.add_argument("--profile", default=None, help="py-spy profiles here (pip install py-spy)")
    p.add_argument("--private-broker", action="store_true", help="a RabbitMQ node of its own")
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    args.readings = args.readings or common.scaled(30_000, args.scale, 1000)
    builds: list[tuple[str, str | None]] = [("this", None)]
    if args.pythonpath:
        builds = [("before", args.pythonpath), ("this", None)]
    rounds: list[dict[str, Any]] = []
    with ExitStack() as stack:
        if args.private_broker:
            common.use_private_broker(stack)
        for i in range(args.rounds):
            order = builds if i % 2 == 0 else builds[::-1]
            for build, path in order:
                load = os.getloadavg()[0]
                res = drain(args, build, path, i)
                res["load_before"] = r(load, 2)
                res["load_after"] = r(os.getloadavg()[0], 2)
                say(
                    f"{build}: {res['cpu_us_per_reading']} us/reading,"
                    f" {res['rate']:.0f} readings/s (load {load:.1f})"
                )
                rounds.append(res)
    per_build = {
        b: statistics.median(x["cpu_us_per_reading"] for x in rounds if x["build"] == b)
        for b, _ in builds
    }
    common.emit(
        common.meta(
            NAME,
            args.scale,
            batch=args.batch,
            rounds=rounds,
            cpu_us_per_reading=per_build,
            targets={"relay_us_per_reading": "lower than before (issue 11)"},
        )
    )


if __name__ == "__main__":
    main()
