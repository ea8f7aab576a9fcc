"""Scheduler memory: resident set size with a million messages waiting.

10 tenant queues x 100,000 messages (1,000,000 at scale 1.0) wait at the broker;
the scheduler's RSS is read from ``/proc/<pid>/status`` (``VmRSS`` sampled every
100 ms, and the kernel's own peak, ``VmHWM``). Side by side in one run:

* ``idle``: the scheduler with the same tenants and empty queues (baseline).
* ``mongo_sink``: MongoDB sink, consuming for a fixed ``--mongo-seconds``.
* ``null_sink``: null sink, the queues topped up again to the full count, until
  every message is drained (the fastest the scheduler can pull messages in, so the
  most pressure on its buffers).

The design bounds what the process holds to ``tenants x scheduler_prefetch``
deliveries plus ``writers`` batches, whatever the backlog; the target is < 200 MB.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks import common
from benchmarks.common import r, say
from fairway.kernel import topology
from fairway.kernel.contract import Reading, tenant_message
from fairway.provision import provision_tenant
from tests.harness import FairwayProcess, Pipeline

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


def top_up(env: Pipeline, per_queue: int, tag: str) -> tuple[int, float]:
    """Fill every queue up to ``per_queue`` ready messages; return (published, seconds)."""
    started = time.perf_counter()
    now = time.time()
    with env.channel() as ch:
        ready = common.queue_counts(ch, queue_names())
        missing = {t: per_queue - ready[topology.tenant_queue_name(t)] for t in TENANTS}
        items = (
            (
                topology.TENANTS,
                t,
                tenant_message(t, Reading(f"{t}-d1", "env", f"{tag}{i}", now, {"temp": 21.5}), now),
            )
            for i in range(max(missing.values()))
            for t in TENANTS
            if i < missing[t]
        )
        n = common.publish_all(ch, items)
        common.wait_ready(ch, queue_names(), per_queue * len(TENANTS), what="top-up")
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


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the three phases."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--per-queue", type=int, default=None, help="default 100,000 x scale")
    p.add_argument("--mongo-seconds", type=float, default=None, help="default 20 x scale (>= 5)")
    p.add_argument("--idle-seconds", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=900.0)
    args = p.parse_args(argv)
    per_queue = args.per_queue or common.scaled(100_000, args.scale, 1000)
    total = per_queue * len(TENANTS)
    mongo_s = args.mongo_seconds or max(5.0, 20.0 * args.scale)

    with common.bench_env("bench-mem") as env:
        provision(env)
        idle = run_phase(env, "null", f"{NAME}-idle", lambda _n, t: t >= args.idle_seconds)
        say(f"idle: {idle['vmhwm_mb']} MB")
        n, fill_s = top_up(env, per_queue, "a")
        say(f"filled {n} messages in {fill_s:.1f} s")
        mongo = run_phase(env, "mongo", f"{NAME}-mongo", lambda _n, t: t >= mongo_s)
        say(f"mongo sink: peak {mongo['vmhwm_mb']} MB, {mongo['stored']} stored in {mongo_s} s")
        n2, refill_s = top_up(env, per_queue, "b")
        null = run_phase(
            env,
            "null",
            f"{NAME}-null",
            lambda stored, t: stored >= total or t > args.timeout,
        )
        say(f"null sink: peak {null['vmhwm_mb']} MB, {null['stored']} in {null['seconds']} s")
        with env.channel() as ch:
            left = sum(common.queue_counts(ch, queue_names()).values())
    settings = env.settings
    peak = max(mongo["vmhwm_mb"], null["vmhwm_mb"])
    result = common.meta(
        NAME,
        args.scale,
        workload={
            "tenants": len(TENANTS),
            "per_queue": per_queue,
            "waiting": total,
            "scheduler_prefetch": settings.scheduler_prefetch,
            "batch_size": settings.batch_size,
            "writers": settings.writers,
            "fill_seconds": r(fill_s, 1),
            "refill": {"published": n2, "seconds": r(refill_s, 1)},
        },
        idle=idle,
        mongo_sink={**mongo, "fixed_seconds": mongo_s},
        null_sink={**null, "left_in_queues_after": left},
        ratios={
            "mongo_peak/idle": common.ratio(mongo["vmhwm_mb"], idle["vmhwm_mb"]),
            "null_peak/idle": common.ratio(null["vmhwm_mb"], idle["vmhwm_mb"]),
        },
        targets={"scheduler peak RSS < 200 MB": {"value": peak, "met": peak < 200}},
    )
    common.emit(result)


if __name__ == "__main__":
    main()
