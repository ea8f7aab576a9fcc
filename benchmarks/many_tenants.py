"""Many tenants: the scheduler's idle cost and per-reading cost at 10 vs 1,000 tenants.

Issue 17's table. Per tenant count (one device per tenant, provisioned in bulk), on a
fresh vhost and database:

* ``broker_baseline``: the broker's CPU (its ``beam.smp``, from ``/proc``) with every
  queue declared and no scheduler, over ``--idle-s`` seconds.
* per contender (``--roots``: ``name=path`` of a checkout; the scheduler runs as
  ``python -m fairway scheduler --sink mongo`` from that directory, so ``before`` can be
  a checkout of main and ``after`` this one, in the same run):

  - idle: once the scheduler consumes every tenant queue (management API) and has
    settled for a few seconds, its CPU and the broker's over ``--idle-s`` seconds
    (fraction of one core), RSS;
  - warm-up: one reading per device, stored (first writes of a device are not what
    the drain measures);
  - drain: the scheduler is stopped (``SIGSTOP``), ``--readings`` readings spread
    evenly over every tenant are published straight into the tenant queues, then
    ``SIGCONT``; drain rate and scheduler CPU per reading from then until its
    ``fairway_scheduler_stored_total`` (+ duplicates) counts them all (polled at 5 Hz,
    a scrape that costs the scheduler more with more tenant labels: a small handicap
    of the many-tenant case), RSS after.

``--rounds N`` repeats everything, alternating the contenders' order; the JSON has every
round and the medians, and the targets are read from the medians. ``--private`` runs a
FerretDB of the run's own (as ``end_to_end``'s). The relay is not involved (the
issue's drain is the scheduler's). The broker is shared
with other people's work: broker figures are noisy, compare them with the baseline
measured just before. Targets (issue 17, as briefed): scheduler CPU per reading at the
largest tenant count within 1.2x of the smallest, scheduler idle CPU at the largest
< 1 % of a core, broker idle <= 1.5x its no-consumer baseline (the ``after`` contender).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import r, say
from benchmarks.end_to_end import broker_pids, cpu_s
from fairway.devtools.processes import free_port
from fairway.kernel import topology
from fairway.kernel.contract import Reading, tenant_message
from fairway.kernel.settings import Settings
from fairway.provision_bulk import TenantItem, provision_many
from tests.harness import FairwayProcess, Pipeline, management

NAME = "many_tenants"
STORED = "fairway_scheduler_stored_total"
DUPLICATES = "fairway_scheduler_duplicates_total"
TARGET_CPU_RATIO = 1.2
TARGET_IDLE = 0.01
TARGET_BROKER_RATIO = 1.5


def tenant_ids(count: int) -> list[str]:
    """``mt0000`` ..."""
    return [f"mt{i:04d}" for i in range(count)]


def start_scheduler(
    root: Path, settings: Settings, label: str, sink: str = "mongo", profile: str = ""
) -> FairwayProcess:
    """``python -m fairway scheduler --sink <sink>`` run from ``root`` (its code); under
    cProfile into ``<profile>/<label>.prof`` if ``profile`` names a directory."""
    port = free_port()
    child = Settings.from_env(settings.environ(), metrics_port=port)
    common.LOGS.mkdir(parents=True, exist_ok=True)
    log_path = common.LOGS / f"{label}.log"
    out = open(log_path, "wb")  # noqa: SIM115 - the child owns it
    profiler = ["-m", "cProfile", "-o", f"{profile}/{label}.prof"] if profile else []
    proc = subprocess.Popen(
        [sys.executable, *profiler, "-m", "fairway", "scheduler", "--sink", sink],
        cwd=root,
        env={**os.environ, **child.environ(), "PYTHONPATH": str(root)},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    return FairwayProcess(proc, port, log_path)


def consumed(env: Pipeline, tenants: list[str]) -> int:
    """Tenant queues with at least one consumer."""
    vhost = urllib.parse.quote(env.name, safe="")
    queues = management("GET", f"queues/{vhost}?columns=name,consumers")
    names = {topology.tenant_queue_name(t) for t in tenants}
    return sum(1 for q in queues if q["name"] in names and q.get("consumers", 0) > 0)


def channels(env: Pipeline) -> int:
    """Channels open on the vhost."""
    vhost = urllib.parse.quote(env.name, safe="")
    return len(management("GET", f"vhosts/{vhost}/channels?columns=name"))


def written(sched: FairwayProcess) -> float:
    """Readings stored or found stored."""
    samples = sched.metrics(STORED, DUPLICATES)
    return sum(samples.get(STORED, {}).values()) + sum(samples.get(DUPLICATES, {}).values())


def broker_cpu(pids: list[int]) -> float:
    """CPU seconds of the broker's nodes so far."""
    return sum(cpu_s(pid) for pid in pids)


def messages(tenants: list[str], per_tenant: int, tag: str, now: float) -> list[tuple]:
    """``per_tenant`` readings per tenant, round-robin over tenants (spread evenly)."""
    return [
        (
            topology.TENANTS,
            tenant,
            tenant_message(
                tenant, Reading(f"{tenant}-d0", "env", f"{tag}-{i}", now + i * 1e-3, {"t": i}), now
            ),
        )
        for i in range(per_tenant)
        for tenant in tenants
    ]


def contender(
    env: Pipeline, root: Path, name: str, tenants: list[str], args: Any, brokers: list[int]
) -> dict[str, Any]:
    """Idle, warm-up and drain of one scheduler build."""
    n = len(tenants)
    sched = start_scheduler(root, env.settings, f"{NAME}-{n}-{name}", args.sink, args.profile)
    try:
        sched.wait_ready(timeout=60)
        started = time.monotonic()
        common.poll_until(lambda: consumed(env, tenants) == n, 300, 0.5, f"{name} consumers")
        ready_s = time.monotonic() - started
        time.sleep(args.settle_s)
        rss_idle = sched.status().get("VmRSS", 0) / 1024
        t0, s0, b0 = time.monotonic(), cpu_s(sched.pid), broker_cpu(brokers)
        time.sleep(args.idle_s)
        elapsed = time.monotonic() - t0
        idle = {
            "scheduler": r((cpu_s(sched.pid) - s0) / elapsed, 4),
            "broker": r((broker_cpu(brokers) - b0) / elapsed, 4),
        }
        chans = channels(env)
        now = time.time()
        with env.channel() as ch:
            common.publish_all(ch, messages(tenants, 1, f"{name}-warm", now))
        common.poll_until(lambda: written(sched) >= n, 120, 0.2, "warm-up")
        warm = written(sched)
        per_tenant = max(1, args.readings // n)
        total = per_tenant * n
        os.kill(sched.pid, signal.SIGSTOP)
        try:
            with env.channel() as ch:
                common.publish_all(ch, messages(tenants, per_tenant, name, time.time()))
                # One round trip after the publishes: the channel has routed them all.
                # (Ready counts would not do: the broker keeps delivering up to the
                # prefetch into the stopped scheduler's socket.)
                ch.queue_declare(topology.tenant_queue_name(tenants[-1]), passive=True)
        finally:
            os.kill(sched.pid, signal.SIGCONT)
        t1, c1 = time.monotonic(), cpu_s(sched.pid)
        common.poll_until(lambda: written(sched) >= warm + total, args.timeout, 0.2, "drain")
        seconds, cpu = time.monotonic() - t1, cpu_s(sched.pid) - c1
        rss_end = sched.status().get("VmRSS", 0) / 1024
    finally:
        sched.stop()
    return {
        "consuming_after_s": r(ready_s, 1),
        "channels": chans,
        "idle_core_fraction": idle,
        "readings": total,
        "drain_seconds": r(seconds, 2),
        "drain_rate": r(total / seconds),
        "scheduler_cpu_us_per_reading": r(cpu * 1e6 / total, 1),
        "rss_mb": {"idle": r(rss_idle), "after_drain": r(rss_end)},
    }


def run_count(n: int, roots: dict[str, Path], args: Any, order: list[str]) -> dict[str, Any]:
    """Provision ``n`` tenants, measure the baseline, then each contender."""
    with common.bench_env(f"bench-mt{n}") as env:
        tenants = tenant_ids(n)
        started = time.perf_counter()
        provision_many(
            env.settings,
            env.db,
            [TenantItem(tenant=t, devices=[f"{t}-d0"], max_backlog=None) for t in tenants],
        )
        provision_s = time.perf_counter() - started
        brokers = broker_pids()
        time.sleep(args.settle_s)
        out: dict[str, Any] = {"provision_s": r(provision_s, 1)}
        for name in order:
            t0, b0 = time.monotonic(), broker_cpu(brokers)
            time.sleep(args.idle_s)
            baseline = (broker_cpu(brokers) - b0) / (time.monotonic() - t0)
            result = contender(env, roots[name], name, tenants, args, brokers)
            result["broker_baseline_core_fraction"] = r(baseline, 4)
            out[name] = result
            say(
                f"{n} tenants, {name}: idle sched {result['idle_core_fraction']['scheduler']:.4f}"
                f" broker {result['idle_core_fraction']['broker']:.4f} (baseline {baseline:.4f}),"
                f" drain {result['drain_rate']:,.0f}/s,"
                f" {result['scheduler_cpu_us_per_reading']} us/reading,"
                f" channels {result['channels']}, rss {result['rss_mb']}"
            )
        return out


def main() -> None:
    """Run every tenant count for every contender; print the JSON."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--tenants", default="10,1000", help="comma-separated tenant counts")
    p.add_argument("--readings", type=int, default=20_000)
    p.add_argument("--idle-s", type=float, default=20.0)
    p.add_argument("--settle-s", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--sink", default="mongo", choices=["mongo", "null"])
    p.add_argument("--rounds", type=int, default=1, help="rounds (contender order alternates)")
    p.add_argument("--profile", default="", help="directory for cProfile dumps (diagnostic)")
    p.add_argument(
        "--roots",
        default=f"after={common.ROOT}",
        help="contenders as name=checkout,...: e.g. before=/path/to/main,after=.",
    )
    p.add_argument(
        "--private",
        action="store_true",
        help="a FerretDB of the run's own on its own PostgreSQL database (as end_to_end's)",
    )
    args = p.parse_args()
    with ExitStack() as stack:
        if args.private:
            from benchmarks.write_cost import use_private_ferretdb

            use_private_ferretdb(stack)
        run(args)


def _medians(results: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over rounds of one contender at one tenant count."""

    def median(get: Any) -> float:
        return r(statistics.median(get(x) for x in results), 4)

    return {
        "scheduler_idle": median(lambda x: x["idle_core_fraction"]["scheduler"]),
        "broker_idle": median(lambda x: x["idle_core_fraction"]["broker"]),
        "broker_baseline": median(lambda x: x["broker_baseline_core_fraction"]),
        "drain_rate": median(lambda x: x["drain_rate"]),
        "scheduler_cpu_us_per_reading": median(lambda x: x["scheduler_cpu_us_per_reading"]),
        "rss_idle_mb": median(lambda x: x["rss_mb"]["idle"]),
        "rss_after_drain_mb": median(lambda x: x["rss_mb"]["after_drain"]),
        "channels": median(lambda x: x["channels"]),
    }


def run(args: Any) -> None:
    """Every tenant count, every contender; print the JSON."""
    counts = [int(x) for x in args.tenants.split(",")]
    roots = {
        k: Path(v).resolve() for k, v in (item.split("=", 1) for item in args.roots.split(","))
    }
    run_meta = common.meta(
        NAME,
        args.scale,
        tenants=counts,
        roots={k: str(v) for k, v in roots.items()},
        sink=args.sink,
        private_database=args.private,
    )
    names = list(roots)
    rounds: list[dict[str, Any]] = []
    for k in range(args.rounds):
        results: dict[str, Any] = {}
        for i, n in enumerate(counts):
            order = names if (i + k) % 2 == 0 else names[::-1]
            results[str(n)] = run_count(n, roots, args, order)
        rounds.append(results)
    lo, hi = str(min(counts)), str(max(counts))
    med = {
        n: {name: _medians([rd[n][name] for rd in rounds]) for name in names}
        for n in map(str, counts)
    }
    ratios = {
        name: common.ratio(
            med[hi][name]["scheduler_cpu_us_per_reading"],
            med[lo][name]["scheduler_cpu_us_per_reading"],
            2,
        )
        for name in names
    }
    last = names[-1]
    idle_hi = med[hi][last]
    broker_ratio = common.ratio(idle_hi["broker_idle"], idle_hi["broker_baseline"], 2)
    cpu_ratio = ratios[last]
    common.emit(
        {
            "meta": {**run_meta, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "medians": med,
            "cpu_per_reading_ratio_largest_to_smallest": ratios,
            "rounds": rounds,
            "targets": {
                f"{last}: scheduler CPU per reading {hi}/{lo} tenants <= {TARGET_CPU_RATIO}": {
                    "value": cpu_ratio,
                    "met": cpu_ratio is not None and cpu_ratio <= TARGET_CPU_RATIO,
                },
                f"{last}: scheduler idle at {hi} tenants < 1 % of a core": {
                    "value": idle_hi["scheduler_idle"],
                    "met": idle_hi["scheduler_idle"] < TARGET_IDLE,
                },
                f"{last}: broker idle at {hi} tenants <= {TARGET_BROKER_RATIO}x no-consumer": {
                    "value": broker_ratio,
                    "met": broker_ratio is not None and broker_ratio <= TARGET_BROKER_RATIO,
                },
            },
        }
    )


if __name__ == "__main__":
    main()
