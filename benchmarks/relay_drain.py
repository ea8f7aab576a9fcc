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

from contextlib import ExitStack
from functools import partial
from typing import Any

from benchmarks import checkouts, common
from benchmarks.common import r
from benchmarks.end_to_end import DEVICES_PER_TENANT, TENANTS, fill
from fairway.devtools import simulator

NAME = "relay_drain"
ACCEPTED = "fairway_relay_accepted_total"
REJECTED = "fairway_relay_rejected_total"


def accepted(proc: Any) -> float:
    """Readings the relay has had confirmed into tenant queues."""
    return sum(proc.metrics(ACCEPTED).get(ACCEPTED, {}).values())


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
        with checkouts.start_build(["relay"], env.settings, f"{NAME}-{build}", pythonpath) as proc:
            proc.wait_ready(timeout=60)
            window = checkouts.first_count(proc, accepted, args.timeout, f"relay {build}")
            with checkouts.py_spy(proc.pid, args.profile, f"{build}-b{args.batch}-r{round_no}.txt"):
                checkouts.time_drain(proc, accepted, window, expected, args.timeout)
                refused = sum(proc.metrics(REJECTED).get(REJECTED, {}).values())
                rss = proc.status().get("VmHWM", 0) / 1024
    return {
        "build": build,
        "messages": generator["messages"],
        **window.figures(expected),
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
    each = checkouts.builds(args.pythonpath)
    with ExitStack() as stack:
        if args.private_broker:
            common.use_private_broker(stack)
        rounds = checkouts.alternate(
            each,
            args.rounds,
            partial(drain, args),
            lambda res: f" (load {res['load_before']:.1f})",
        )
    per_build = checkouts.medians(rounds, each, "cpu_us_per_reading")
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
