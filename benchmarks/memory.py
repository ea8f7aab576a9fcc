"""Scheduler memory: resident set size with a million readings waiting.

10 tenant queues x 100,000 readings (1,000,000 at scale 1.0) wait at the broker
(``--tenants 200``: 200 queues x 5,000, the same million spread over more tenants);
the scheduler's RSS is read from ``/proc/<pid>/status`` (``VmRSS`` sampled every
100 ms, and the kernel's own peak, ``VmHWM``). Side by side in one run:

* ``idle``: the scheduler with the same tenants and empty queues (baseline).
* ``mongo_sink``: MongoDB sink, consuming for a fixed ``--mongo-seconds``.
* ``null_sink``: null sink, the queues topped up again to the full count, until
  every message is drained (the fastest the scheduler can pull messages in, so the
  most pressure on its buffers).

Each sink phase runs once per format (``--formats``): ``single``, one reading per
message (the format before bundles, still read), and ``bundles``, the same readings in
the bundles the relay publishes today (``--bundle`` readings each, default the relay's
``bundle_max_readings``, built with the pipeline's own contract functions and the
``x-fairway-readings`` header). The prefetch floor and the buffer budget count messages
and, since the budget in readings (``scheduler_buffer_readings``), readings too: the
scheduler's prefetches hold about twice that budget at most, whatever the bundle size.

The design bounds what the process holds whatever the backlog; the target is < 200 MB.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pika

from benchmarks import common
from benchmarks.common import r, say
from fairway.kernel import topology
from fairway.kernel.contract import Reading, tenant_message
from fairway.provision import provision_tenant
from tests.harness import FairwayProcess, Pipeline

PROPS = pika.BasicProperties(delivery_mode=2, content_type="application/json")

NAME = "memory"
STORED = "fairway_scheduler_stored_total"
TENANTS = [f"mem{i}" for i in range(10)]


def provision(env: Pipeline) -> None:
    """Tenants and their queues."""
    for tenant in TENANTS:
        provision_tenant(env.settings, tenant, 1, env.settings.tenant_max_backlog)


def queue_names() -> list[str]:
    """``tenant.<id>`` of every tenant."""
    return [topology.tenant_queue_name(t) for t in TENANTS]


def top_up(env: Pipeline, per_queue: int, tag: str, bundle: int = 0) -> tuple[int, float]:
    """Fill every queue up to ``per_queue`` readings: single-reading messages, or (with
    ``bundle``) relay bundles of that many readings; return (messages published, seconds).
    """
    started = time.perf_counter()
    now = time.time()
    size = bundle or 1
    messages = -(-per_queue // size)

    def reading(t: str, i: int) -> Reading:
        return Reading(f"{t}-d1", "env", f"{tag}{i}", now, {"temp": 21.5})

    def message(t: str, i: int) -> tuple[str, str, bytes, Any]:
        if not bundle:
            return topology.TENANTS, t, tenant_message(t, reading(t, i), now), PROPS
        first = i * size
        group = [reading(t, j) for j in range(first, min(first + size, per_queue))]
        return topology.TENANTS, t, common.bundle(t, group, now), common.bundle_props(len(group))

    with env.channel() as ch:
        ready = common.queue_counts(ch, queue_names())
        missing = {t: messages - ready[topology.tenant_queue_name(t)] for t in TENANTS}
        items = (
            message(t, messages - missing[t] + i)
            for i in range(max(missing.values()))
            for t in TENANTS
            if i < missing[t]
        )
        n = common.publish_all(ch, items)
        common.wait_ready(ch, queue_names(), messages * len(TENANTS), what="top-up")
    return n, time.perf_counter() - started


def watch_rss(proc: FairwayProcess, until: Any, interval: float = 0.1) -> dict[str, Any]:
    """Sample VmRSS until ``until()`` is true; return peak, mean and the kernel's VmHWM."""
    samples: list[int] = []
    while True:
        status = proc.status()
        if "VmRSS" in status:
            samples.append(status["VmRSS"])
        if until():
            break
        time.sleep(interval)
    hwm = proc.status().get("VmHWM", max(samples, default=0))
    return {
        "samples": len(samples),
        "rss_peak_mb": r(max(samples, default=0) / 1024),
        "rss_mean_mb": r(sum(samples) / max(len(samples), 1) / 1024),
        "rss_last_mb": r(samples[-1] / 1024 if samples else 0),
        "vmhwm_mb": r(hwm / 1024),
    }


def run_phase(env: Pipeline, sink: str, label: str, until: Any) -> dict[str, Any]:
    """Start the scheduler, watch its memory until ``until(proc, t0)``, stop it."""
    with common.fairway_process(["scheduler", "--sink", sink], env.settings, label) as proc:
        proc.wait_ready()
        t0 = time.monotonic()
        stored: list[float] = [0.0]
        stop = threading.Event()

        def poll_stored() -> None:  # from another thread, at a gentle 2 Hz
            while not stop.wait(0.5):
                stored[0] = proc.metric_sum(STORED)

        poller = threading.Thread(target=poll_stored, daemon=True)
        poller.start()
        mem = watch_rss(proc, lambda: until(stored[0], time.monotonic() - t0))
        stop.set()
        poller.join(5)
        seconds = time.monotonic() - t0
        total = proc.metric_sum(STORED)
    return {**mem, "seconds": r(seconds, 2), "stored": int(total), "rate": r(total / seconds)}


def sink_phases(
    env: Pipeline, args: Any, per_queue: int, mongo_s: float, bundle: int
) -> dict[str, Any]:
    """MongoDB sink for ``mongo_s``, then the null sink until all is drained (queues
    filled to ``per_queue`` readings before each), in one message format."""
    total = per_queue * len(TENANTS)
    fmt = f"bundles of {bundle}" if bundle else "single readings"
    n, fill_s = top_up(env, per_queue, f"a{bundle}-", bundle)
    say(f"{fmt}: filled {n} messages ({total} readings) in {fill_s:.1f} s")
    mongo = run_phase(env, "mongo", f"{NAME}-mongo-{bundle}", lambda _n, t: t >= mongo_s)
    say(f"{fmt}, mongo sink: peak {mongo['vmhwm_mb']} MB, {mongo['stored']} stored in {mongo_s} s")
    # Bundles the MongoDB sink left half-read are topped up with new ids: a reading id
    # met again would be a duplicate, not stored, and never reach the stored count.
    n2, refill_s = top_up(env, per_queue, f"b{bundle}-", bundle)
    null = run_phase(
        env,
        "null",
        f"{NAME}-null-{bundle}",
        lambda stored, t: stored >= total or t > args.timeout,
    )
    say(f"{fmt}, null sink: peak {null['vmhwm_mb']} MB, {null['stored']} in {null['seconds']} s")
    with env.channel() as ch:
        left = sum(common.queue_counts(ch, queue_names()).values())
    return {
        "messages_waiting": n,
        "fill_seconds": r(fill_s, 1),
        "refill": {"published": n2, "seconds": r(refill_s, 1)},
        "mongo_sink": {**mongo, "fixed_seconds": mongo_s},
        "null_sink": {**null, "left_in_queues_after": left},
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the phases."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--tenants", type=int, default=10, help="tenant queues (default 10)")
    p.add_argument(
        "--per-queue", type=int, default=None, help="readings; default 1,000,000 / tenants x scale"
    )
    p.add_argument("--mongo-seconds", type=float, default=None, help="default 20 x scale (>= 5)")
    p.add_argument("--idle-seconds", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--formats", default="single,bundles", help="comma-separated subset")
    p.add_argument("--bundle", type=int, default=None, help="readings per bundle (relay's)")
    args = p.parse_args(argv)
    TENANTS[:] = [f"mem{i}" for i in range(args.tenants)]
    per_queue = args.per_queue or common.scaled(1_000_000 // args.tenants, args.scale, 100)
    total = per_queue * len(TENANTS)
    mongo_s = args.mongo_seconds or max(5.0, 20.0 * args.scale)
    formats = args.formats.split(",")

    with common.bench_env("bench-mem") as env:
        bundle = args.bundle or env.settings.bundle_max_readings
        provision(env)
        idle = run_phase(env, "null", f"{NAME}-idle", lambda _n, t: t >= args.idle_seconds)
        say(f"idle: {idle['vmhwm_mb']} MB")
        phases = {
            fmt: sink_phases(env, args, per_queue, mongo_s, bundle if fmt == "bundles" else 0)
            for fmt in formats
        }
    settings = env.settings
    peaks = {
        fmt: max(ph["mongo_sink"]["vmhwm_mb"], ph["null_sink"]["vmhwm_mb"])
        for fmt, ph in phases.items()
    }
    ratios = {}
    for fmt, ph in phases.items():
        for sink in ("mongo_sink", "null_sink"):
            ratios[f"{fmt} {sink} peak/idle"] = common.ratio(ph[sink]["vmhwm_mb"], idle["vmhwm_mb"])
    result = common.meta(
        NAME,
        args.scale,
        workload={
            "tenants": len(TENANTS),
            "per_queue_readings": per_queue,
            "readings_waiting": total,
            "bundle_readings": bundle,
            "scheduler_prefetch": settings.scheduler_prefetch,
            "scheduler_buffer": settings.scheduler_buffer,
            "scheduler_buffer_readings": getattr(settings, "scheduler_buffer_readings", None),
            "batch_size": settings.batch_size,
            "writers": settings.writers,
        },
        idle=idle,
        **phases,
        ratios=ratios,
        targets={
            f"scheduler peak RSS < 200 MB ({fmt})": {"value": peak, "met": peak < 200}
            for fmt, peak in peaks.items()
        },
    )
    common.emit(result)


if __name__ == "__main__":
    main()
