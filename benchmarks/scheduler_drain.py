"""The scheduler alone: CPU per reading draining a pre-filled backlog of relay bundles.

Cheaper than ``end_to_end --only-drain`` when only the scheduler changes: no relay, no
simulator. 10 tenants x 5 devices (as ``end_to_end``); each tenant queue is filled,
before the scheduler starts, with relay-format bundles of ``--bundle`` readings
(``end_to_end``'s single-reading drain sees ~37 per bundle, its 10-reading batches 50),
the devices of a tenant in turn. Then ``python -m fairway scheduler`` (MongoDB sink, or
``--sink null``) drains them; its CPU (user + system, ``/proc``) is counted from its
first stored reading to the last (interpolated between 0.1 s polls of its counter),
per reading stored after the first poll. With ``--profile DIR`` py-spy records the
scheduler (GIL holder, 250 Hz) over the same window: collapsed stacks, one file per round.

``--pythonpath`` runs the scheduler from another checkout (``main``'s), alternating with
this one round by round: before/after in one run. The database and the broker are not
charged here (``end_to_end`` does that).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import cpu_s, r, say
from benchmarks.end_to_end import TENANTS, provision  # the same fleet as end_to_end
from fairway.kernel import topology
from fairway.kernel.contract import Reading
from tests.harness import Pipeline

NAME = "scheduler_drain"
STORED = "fairway_scheduler_stored_total"
DUPLICATES = "fairway_scheduler_duplicates_total"
BATCH_COUNT = "fairway_scheduler_batch_size_count"
BATCH_SUM = "fairway_scheduler_batch_size_sum"


def fill(env: Pipeline, by_tenant: dict[str, list[str]], readings: int, bundle: int) -> int:
    """``readings`` readings in bundles of ``bundle``, spread over the tenants; messages."""
    now = time.time()
    per_tenant = readings // len(by_tenant)

    def items() -> Any:
        n = 0
        for start in range(0, per_tenant, bundle):
            for tenant, devices in by_tenant.items():
                part = [
                    Reading(
                        devices[(start + k) % len(devices)],
                        "env",
                        f"m{start + k:08d}",
                        now + (start + k) * 1e-4,
                        {"temp": 20.0 + (start + k) % 50 / 10, "ok": True},
                    )
                    for k in range(min(bundle, per_tenant - start))
                ]
                n += 1
                yield (
                    topology.TENANTS,
                    tenant,
                    common.bundle(tenant, part, now),
                    common.bundle_props(len(part)),
                )

    with env.channel() as ch:
        sent = common.publish_all(ch, items())
        names = [topology.tenant_queue_name(t) for t in by_tenant]
        common.wait_ready(ch, names, sent, 120, "fill")
    return sent


def system_s(pid: int) -> float:
    """System CPU seconds of one process so far (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / common.CLOCK_TICKS


def batches(proc: Any) -> tuple[float, float]:
    """Write batches so far, and the readings they held."""
    samples = proc.metrics(BATCH_COUNT, BATCH_SUM)
    return sum(samples.get(BATCH_COUNT, {}).values()), sum(samples.get(BATCH_SUM, {}).values())


def written(proc: Any) -> float:
    """Readings stored or found stored."""
    samples = proc.metrics(STORED, DUPLICATES)
    return sum(samples.get(STORED, {}).values()) + sum(samples.get(DUPLICATES, {}).values())


def drain(args: Any, build: str, pythonpath: str | None, round_no: int) -> dict[str, Any]:
    """One drain of a fresh backlog by one scheduler build."""
    with common.bench_env(f"bench-sd-{build}") as env:
        by_tenant = provision(env)
        messages = fill(env, by_tenant, args.readings, args.bundle)
        expected = (args.readings // len(TENANTS)) * len(TENANTS)
        settings = env.settings
        # The child imports from its working directory first: the other build's checkout.
        here = os.getcwd()
        os.chdir(pythonpath or common.ROOT)
        try:
            ctx = common.fairway_process(
                ["scheduler", "--sink", args.sink], settings, f"{NAME}-{build}"
            )
            proc = ctx.__enter__()
        finally:
            os.chdir(here)
        spy = None
        try:
            proc.wait_ready(timeout=60)
            n0 = 0.0
            while n0 <= 0:
                time.sleep(0.02)
                n0 = written(proc)
            t0, c0, s0, b0 = time.monotonic(), cpu_s(proc.pid), system_s(proc.pid), batches(proc)
            if args.profile:
                out = Path(args.profile) / f"{build}-r{round_no}.txt"
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--gil",
                        "-r",
                        "250",
                        "-p",
                        str(proc.pid),
                        "-o",
                        str(out),
                        "-f",
                        "raw",
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            prev_t, prev_n, prev_c = t0, n0, c0
            while True:
                time.sleep(0.1)
                now, n, c = time.monotonic(), written(proc), cpu_s(proc.pid)
                if n >= expected:
                    frac = (expected - prev_n) / max(n - prev_n, 1e-9)
                    t1 = prev_t + (now - prev_t) * frac
                    c1 = prev_c + (c - prev_c) * frac
                    break
                if now - t0 > args.timeout:
                    raise TimeoutError(f"{n} of {expected} after {args.timeout} s")
                prev_t, prev_n, prev_c = now, n, c
            s1, b1 = system_s(proc.pid), batches(proc)
            rss = proc.status().get("VmHWM", 0) / 1024
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            ctx.__exit__(None, None, None)
    readings = expected - n0
    return {
        "build": build,
        "messages": messages,
        "readings_timed": int(readings),
        "seconds": r(t1 - t0, 2),
        "rate": r(readings / (t1 - t0)),
        "cpu_us_per_reading": r((c1 - c0) * 1e6 / readings, 2),
        "system_share": r((s1 - s0) / max(c1 - c0, 1e-9), 2),  # up to 0.1 s past the end
        "batches": int(b1[0] - b0[0]),
        "mean_batch_readings": r((b1[1] - b0[1]) / max(b1[0] - b0[0], 1)),
        "rss_mb": r(rss),
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; alternate the builds for ``--rounds`` rounds."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=None, help="per drain (30,000 x scale)")
    p.add_argument("--bundle", type=int, default=37, help="readings per bundle")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sink", default="mongo", choices=["mongo", "null"])
    p.add_argument("--pythonpath", default=None, help="the before build's checkout (run there)")
    p.add_argument("--profile", default=None, help="py-spy profiles here (pip install py-spy)")
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    args.readings = args.readings or common.scaled(30_000, args.scale, 1000)
    builds: list[tuple[str, str | None]] = [("this", None)]
    if args.pythonpath:
        builds = [("before", args.pythonpath), ("this", None)]
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        order = builds if i % 2 == 0 else builds[::-1]
        for build, path in order:
            load = os.getloadavg()[0]
            res = drain(args, build, path, i)
            res["load_before"] = r(load, 2)
            res["load_after"] = r(os.getloadavg()[0], 2)
            say(
                f"{build}: {res['cpu_us_per_reading']} us/reading, {res['rate']:.0f} readings/s,"
                f" batches of {res['mean_batch_readings']}, system {res['system_share']}"
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
            bundle=args.bundle,
            sink=args.sink,
            rounds=rounds,
            cpu_us_per_reading=per_build,
            targets={"scheduler_us_per_reading": "lower than before (issue 11)"},
        )
    )


if __name__ == "__main__":
    main()
