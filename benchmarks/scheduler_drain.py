"""The scheduler alone: CPU per reading draining a pre-filled backlog of relay bundles.

Cheaper than ``end_to_end --only-drain`` when only the scheduler changes: no relay, no
simulator. 10 tenants x 5 devices (as ``end_to_end``); each tenant queue is filled,
before the scheduler starts, with relay-format bundles of ``--bundle`` readings
(``end_to_end``'s single-reading drain sees ~37 per bundle, its 10-reading batches 50),
the devices of a tenant in turn; with ``--batch N`` (``end_to_end``'s ``batch10``: 10)
the readings come as device batches of ``N`` (ids ``<batch id>#<index>``, one device,
one receipt time, whole batches in a bundle), stored as batch documents. Then
``python -m fairway scheduler`` (MongoDB sink, or ``--sink null``) drains them; its CPU
(user + system, ``/proc``) is counted from its first stored reading to the last
(interpolated between 0.1 s polls of its counter), per reading stored after the first
poll. With ``--profile DIR`` py-spy records the
scheduler (GIL holder, 250 Hz) over the same window: collapsed stacks, one file per round.

``--pythonpath`` runs the scheduler from another checkout (``main``'s), alternating with
this one round by round: before/after in one run. The database and the broker are not
charged here (``end_to_end`` does that).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import checkouts, common
from benchmarks.common import r
from benchmarks.end_to_end import TENANTS, provision  # the same fleet as end_to_end
from fairway.kernel import topology
from fairway.kernel.contract import Reading
from tests.harness import Pipeline

NAME = "scheduler_drain"
STORED = "fairway_scheduler_stored_total"
DUPLICATES = "fairway_scheduler_duplicates_total"
BATCH_COUNT = "fairway_scheduler_batch_size_count"
BATCH_SUM = "fairway_scheduler_batch_size_sum"


def fill(
    env: Pipeline, by_tenant: dict[str, list[str]], readings: int, bundle: int, batch: int = 1
) -> int:
    """``readings`` readings in bundles of ``bundle``, spread over the tenants; messages.
    ``batch`` > 1: device batches of ``batch`` readings (``bundle`` a multiple of it)."""
    now = time.time()
    per_tenant = readings // len(by_tenant)

    def one(devices: list[str], n: int) -> Reading:
        if batch > 1:  # a device batch's reading: its device and id from the batch's number
            device, message_id = (
                devices[(n // batch) % len(devices)],
                f"b{n // batch:07d}#{n % batch}",
            )
        else:
            device, message_id = devices[n % len(devices)], f"m{n:08d}"
        return Reading(
            device, "env", message_id, now + n * 1e-4, {"temp": 20.0 + n % 50 / 10, "ok": True}
        )

    def items() -> Any:
        n = 0
        for start in range(0, per_tenant, bundle):
            for tenant, devices in by_tenant.items():
                part = [one(devices, start + k) for k in range(min(bundle, per_tenant - start))]
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
        messages = fill(env, by_tenant, args.readings, args.bundle, args.batch)
        expected = (args.readings // len(TENANTS)) * len(TENANTS)
        with checkouts.start_build(
            ["scheduler", "--sink", args.sink], env.settings, f"{NAME}-{build}", pythonpath
        ) as proc:
            proc.wait_ready(timeout=60)
            window = checkouts.first_count(proc, written, args.timeout, f"scheduler {build}")
            s0, b0 = system_s(proc.pid), batches(proc)
            with checkouts.py_spy(proc.pid, args.profile, f"{build}-r{round_no}.txt"):
                checkouts.time_drain(proc, written, window, expected, args.timeout)
                s1, b1 = system_s(proc.pid), batches(proc)
                rss = proc.status().get("VmHWM", 0) / 1024
    return {
        "build": build,
        "messages": messages,
        **window.figures(expected),
        # up to 0.1 s past the end
        "system_share": r((s1 - s0) / max(window.c1 - window.c0, 1e-9), 2),
        "batches": int(b1[0] - b0[0]),
        "mean_batch_readings": r((b1[1] - b0[1]) / max(b1[0] - b0[0], 1)),
        "rss_mb": r(rss),
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; alternate the builds for ``--rounds`` rounds."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=None, help="per drain (30,000 x scale)")
    p.add_argument("--bundle", type=int, default=37, help="readings per bundle")
    p.add_argument("--batch", type=int, default=1, help="readings per device batch (1: none)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sink", default="mongo", choices=["mongo", "null"])
    p.add_argument("--pythonpath", default=None, help="the before build's checkout (run there)")
    p.add_argument("--profile", default=None, help="py-spy profiles here (pip install py-spy)")
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    args.readings = args.readings or common.scaled(30_000, args.scale, 1000)
    each = checkouts.builds(args.pythonpath)
    rounds = checkouts.alternate(
        each,
        args.rounds,
        partial(drain, args),
        lambda res: f", batches of {res['mean_batch_readings']}, system {res['system_share']}",
    )
    per_build = checkouts.medians(rounds, each, "cpu_us_per_reading")
    common.emit(
        common.meta(
            NAME,
            args.scale,
            bundle=args.bundle,
            batch=args.batch,
            sink=args.sink,
            rounds=rounds,
            cpu_us_per_reading=per_build,
            targets={"scheduler_us_per_reading": "lower than before (issue 11)"},
        )
    )


if __name__ == "__main__":
    main()
