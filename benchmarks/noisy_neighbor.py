"""Noisy neighbour: quiet tenants' latency and fair shares, DRR vs one shared FIFO queue.

Ten tenants (``nn0`` is noisy, ``nn1``..``nn9`` are quiet) into the scheduler with the
MongoDB sink, every message published straight to ``tenants`` in the relay's
tenant-queue format of today, bundles (``--bundle``, default the relay's
``bundle_max_readings``): backlogs and the flood in the bundles a relay makes of them
(one open bundle per tenant, published full), each quiet reading in a bundle of its
own (20 readings/s are 50 ms apart, past the relay's 5 ms linger); ``--bundle 0``
publishes single-reading messages, the format before bundles. Each reading's
``received`` is its publish time. Counts and rates are readings. Side by side in one
run:

* **DRR**: one queue per tenant, ``python -m fairway scheduler`` as configured.
* **FIFO**: the same scheduler and sink, but one tenant queue ``tenant.fifo`` into
  which every tenant's messages are routed (bodies keep their real tenant). As the
  one backlogged queue it is granted the whole ``scheduler_buffer``, the budget DRR
  shares among its backlogged tenants, so FIFO is not starved of batch material.

Measured:

1. ``calibration``: the scheduler's throughput C (readings/s) with all ten queues
   backlogged; every backlog below is sized from it, so the flood really is a
   backlog on this machine.
2. ``latency``: quiet tenants publish ``--quiet-rate`` readings/s each (with confirms);
   publish-to-stored latency of every quiet message. Stored is observed by polling,
   every ``--poll-ms``, the scheduler's count of written documents per document
   tenant (each quiet tenant's messages are written in publish order); polling
   MongoDB for each ``_id`` does not work on FerretDB 1.24/SQLite, where a find by
   ``_id`` is a full table scan. Phases: ``drr_unloaded`` (no flood), ``drr_flood``
   and ``fifo_flood``: the noisy tenant starts with a backlog that outlasts the
   window and keeps publishing 100 x a quiet tenant's rate (own connection).
3. ``fairness``: every tenant backlogged (DRR: each queue pre-filled beyond its
   fair share of the window; FIFO: the same number of messages in the arrival order
   of a noisy neighbour publishing 100 x each quiet tenant). Served messages per
   tenant over a fixed window, from the scheduler's per-tenant stored counter (DRR)
   or from the positions the stored total covers in the known FIFO order; Jain's
   index over the ten served rates.
4. ``weighted``: four backlogged tenants with weights 1, 2, 3, 4: served shares vs
   weights (FIFO twin: the same tenants arriving at equal rates), and once more with
   ``scheduler_prefetch`` raised (``--variant-prefetch``, a diagnostic, not a target).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pika

from benchmarks import common
from benchmarks.common import percentile, r, ratio, say
from fairway.kernel import topology
from fairway.kernel.contract import Reading, tenant_message
from fairway.kernel.settings import Settings
from fairway.storage import registry
from tests.harness import FairwayProcess, Pipeline, label_values

NAME = "noisy_neighbor"
NOISY = "nn0"
QUIET = [f"nn{i}" for i in range(1, 10)]
ALL = [NOISY, *QUIET]
FIFO = "fifo"
WEIGHTS = {"w1": 1, "w2": 2, "w3": 3, "w4": 4}
STORED = "fairway_scheduler_stored_total"
BUFFERED = "fairway_scheduler_buffered"
LAG_COUNT = "fairway_scheduler_lag_seconds_count"
CDF_POINTS = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5, 100)
LAG_BUCKET = "fairway_scheduler_lag_seconds_bucket"
PROPS = pika.BasicProperties(delivery_mode=2, content_type="application/json")


def reading(device: str, mid: str, now: float) -> Reading:
    """One reading of ``device`` taken at ``now``."""
    return Reading(device, "env", mid, now, {"temp": 21.5})


def message(
    tenant: str, device: str, mids: list[str], now: float, bundle: int
) -> tuple[bytes, pika.BasicProperties]:
    """A tenant-queue message whose readings' ``received`` is ``now``: a relay bundle of
    ``mids``, or (``bundle`` 0, the format before bundles) one single reading."""
    if not bundle:
        assert len(mids) == 1
        return tenant_message(tenant, reading(device, mids[0], now), now), PROPS
    readings = [reading(device, mid, now) for mid in mids]
    return common.bundle(tenant, readings, now), common.bundle_props(len(readings))


def bundled(sequence: list[str], bundle: int) -> list[tuple[str, int]]:
    """(tenant, readings) messages for readings arriving in ``sequence`` order."""
    return common.relay_bundles(sequence, bundle) if bundle else [(t, 1) for t in sequence]


# -- environments ------------------------------------------------------------------------
@contextmanager
def pipeline(
    prefix: str, tenants: dict[str, int], fifo: bool, **settings: Any
) -> Iterator[Pipeline]:
    """Fresh vhost + database with the tenants (or the single FIFO tenant) provisioned."""
    # No override for FIFO: its one backlogged queue is granted the whole buffer budget,
    # the same budget DRR shares among its backlogged tenants.
    overrides = dict(settings)
    queues = {FIFO: 1} if fifo else tenants
    with common.bench_env(prefix, **overrides) as env:
        with env.channel() as ch:
            for tenant in queues:
                topology.tenant_queue(
                    tenant, env.settings.tenant_max_backlog, env.settings
                ).declare(ch)
        for tenant, weight in queues.items():
            registry.create_tenant(env.db, tenant, weight, env.settings.tenant_max_backlog)
        yield env


def route(tenant: str, fifo: bool) -> str:
    """Routing key on ``tenants``: the tenant, or the shared FIFO queue."""
    return FIFO if fifo else tenant


def fill(
    env: Pipeline, sequence: list[str], fifo: bool, tag: str, bundle: int, wait: bool = True
) -> float:
    """Publish one reading per entry of ``sequence`` (a tenant id), bundled as the relay
    would (:func:`bundled`), in that order."""
    started = time.perf_counter()
    now = time.time()
    messages = bundled(sequence, bundle)
    seen: Counter[str] = Counter()

    def item(tenant: str, count: int) -> tuple[str, str, bytes, pika.BasicProperties]:
        first = seen[tenant]
        seen[tenant] += count
        mids = [f"{tag}{i}" for i in range(first, first + count)]
        body, props = message(tenant, f"{tenant}-b", mids, now, bundle)
        return topology.TENANTS, route(tenant, fifo), body, props

    queues = sorted({topology.tenant_queue_name(route(t, fifo)) for t in sequence})
    with env.channel() as ch:
        common.publish_all(ch, (item(t, n) for t, n in messages))
        if wait:
            common.wait_ready(ch, queues, len(messages), what=f"fill {tag}")
    return time.perf_counter() - started


def interleave(counts: dict[str, int]) -> list[str]:
    """Tenants in round-robin order until each has appeared ``counts[t]`` times."""
    out: list[str] = []
    left = dict(counts)
    while left:
        for t in list(left):
            out.append(t)
            left[t] -= 1
            if not left[t]:
                del left[t]
    return out


def noisy_arrivals(total: int, noisy_factor: int = 100) -> list[str]:
    """Arrival order of a noisy neighbour: per round ``noisy_factor`` x nn0, 1 x each quiet."""
    out: list[str] = []
    while len(out) < total:
        out.extend([NOISY] * noisy_factor)
        out.extend(QUIET)
    return out[:total]


@contextmanager
def scheduler(env: Pipeline, label: str) -> Iterator[FairwayProcess]:
    """The scheduler with the MongoDB sink, metrics endpoint up."""
    with common.fairway_process(["scheduler", "--sink", "mongo"], env.settings, label) as proc:
        proc.wait_ready()
        yield proc


def wait_stored(proc: FairwayProcess, at_least: float, timeout: float = 120.0) -> float:
    """Wait until the scheduler stored ``at_least`` messages; return when (wall time)."""
    common.poll_until(
        lambda: proc.metric_sum(STORED) >= at_least, timeout, 0.02, f"{at_least} stored"
    )
    return time.time()


# -- 1. calibration ------------------------------------------------------------------------
def calibrate(per_tenant: int, bundle: int) -> dict[str, Any]:
    """Scheduler throughput with all ten tenant queues backlogged."""
    with pipeline("bench-nn-cal", dict.fromkeys(ALL, 1), fifo=False) as env:
        fill(env, interleave(dict.fromkeys(ALL, per_tenant)), False, "c", bundle)
        total = per_tenant * len(ALL)
        with scheduler(env, f"{NAME}-calibrate") as proc:
            wait_stored(proc, 1)
            t0, n0 = time.time(), proc.metric_sum(STORED)
            t1 = wait_stored(proc, total * 0.9)
            n1 = proc.metric_sum(STORED)
    rate = (n1 - n0) / (t1 - t0)
    say(f"calibration: scheduler + MongoDB sink stores {rate:.0f} readings/s")
    return {"readings": total, "rate": r(rate)}


# -- 2. latency ------------------------------------------------------------------------------
def load(
    env: Pipeline,
    proc: FairwayProcess,
    *,
    fifo: bool,
    quiet_rate: float,
    flood_rate: float,
    duration: float,
    drain_timeout: float,
    poll_s: float,
    bundle: int,
    on_window_end: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Publish quiet (and flood) traffic for ``duration``; time quiet messages to storage.

    Three threads, as three independent parties: the flood publisher (its own
    connection, no confirms, paced), the quiet publisher (its own connection; each
    publish waits for the broker's confirm, like a device using confirms, so a broker
    that throttles the queue shows up in the latency) and, here, the observer.

    The observer polls the scheduler's per-tenant count of durably written documents
    (``fairway_scheduler_lag_seconds_count{tenant}``, labelled by the document's own
    tenant even when it came through the shared FIFO queue) every ``poll_s``. A
    quiet tenant's messages are written in the order they were published (one queue,
    one publisher), so when its count reaches k, its k-th message is stored.
    (Looking each ``_id`` up in MongoDB would be simpler, but on FerretDB 1.24/SQLite
    a find by ``_id`` is a full table scan: ~0.8 s at 100k documents.)
    """
    published: dict[str, list[float]] = {t: [] for t in QUIET}  # publish wall times
    stats: dict[str, Any] = {"quiet_sent": 0, "flood_sent": 0, "quiet_confirm_max_ms": 0.0}
    errors: list[str] = []
    base = {t: int(proc.metric_by(LAG_COUNT, "tenant").get(t, 0)) for t in QUIET}
    start = time.monotonic() + 0.2

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # reported in the result, never silently
                errors.append(f"{fn.__name__}: {exc!r}")

        return run

    def quiet() -> None:
        sent = dict.fromkeys(QUIET, 0)
        with env.channel() as ch:
            ch.confirm_delivery()
            while (elapsed := time.monotonic() - start) < duration:
                for j, tenant in enumerate(QUIET):
                    due = int(max(elapsed, 0.0) * quiet_rate + j / len(QUIET)) + 1
                    while sent[tenant] < due:
                        sent[tenant] += 1
                        wall = time.time()
                        quiet_body, props = message(
                            tenant, f"{tenant}-q", [f"q{sent[tenant]}"], wall, bundle
                        )
                        ch.basic_publish(topology.TENANTS, route(tenant, fifo), quiet_body, props)
                        waited = (time.time() - wall) * 1000
                        stats["quiet_confirm_max_ms"] = max(stats["quiet_confirm_max_ms"], waited)
                        published[tenant].append(wall)
                time.sleep(0.001)
        stats["quiet_sent"] = sum(sent.values())

    def flood() -> None:
        n = 0  # readings
        size = bundle or 1  # a relay flooded by one tenant publishes its bundles full
        with env.channel() as ch:
            impl = ch._impl
            while (elapsed := time.monotonic() - start) < duration:
                due = int(max(elapsed, 0.0) * flood_rate)
                while n + size <= due:
                    mids = [f"f{i}" for i in range(n + 1, n + size + 1)]
                    n += size
                    flood_body, props = message(NOISY, f"{NOISY}-f", mids, time.time(), bundle)
                    impl.basic_publish(topology.TENANTS, route(NOISY, fifo), flood_body, props)
                ch.connection.process_data_events(0)
                time.sleep(0.002)
            stats["flood_sent"] = n

    quiet_thread = threading.Thread(target=guarded(quiet), daemon=True)
    flood_thread = threading.Thread(target=guarded(flood), daemon=True)
    quiet_thread.start()
    if flood_rate:
        flood_thread.start()
    latencies: list[float] = []
    seen = dict.fromkeys(QUIET, 0)
    polls = 0
    window: dict[str, Any] = {}
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= duration and not window:
            window = on_window_end()
        counts = proc.metric_by(LAG_COUNT, "tenant")
        now = time.time()
        polls += 1
        for tenant in QUIET:
            written = min(int(counts.get(tenant, 0)) - base[tenant], len(published[tenant]))
            while seen[tenant] < written:
                latencies.append(now - published[tenant][seen[tenant]])
                seen[tenant] += 1
        done = all(seen[t] == len(published[t]) for t in QUIET)
        if elapsed >= duration and done and not quiet_thread.is_alive():
            break
        if elapsed > duration + drain_timeout:
            break
        time.sleep(poll_s)
    quiet_thread.join(5)
    if flood_rate:
        flood_thread.join(30)
    return {
        **stats,
        "quiet_confirm_max_ms": r(stats["quiet_confirm_max_ms"]),
        "latencies": latencies,
        "unfinished": sum(len(published[t]) - seen[t] for t in QUIET),
        "metric_polls": polls,
        "errors": errors,
        **window,
    }


def histogram_p99_bound(proc: FairwayProcess) -> float | None:
    """Cross-check from the scheduler's own lag histogram: the bucket bound (ms) under
    which 99 % of the quiet tenants' documents were written (whole phase)."""
    samples = proc.metrics(LAG_BUCKET).get(LAG_BUCKET, {})
    by_le: dict[float, float] = {}
    for labels, value in samples.items():
        parts = dict(p.split("=", 1) for p in labels.split(","))
        if parts.get("tenant", "").strip('"') in QUIET:
            le = float(parts["le"].strip('"'))
            by_le[le] = by_le.get(le, 0.0) + value
    if not by_le:
        return None
    total = by_le[max(by_le)]
    for le in sorted(by_le):
        if by_le[le] >= 0.99 * total:
            return le * 1000
    return None


WRITE_SECONDS = "fairway_scheduler_write_seconds"
BATCH_SIZE = "fairway_scheduler_batch_size"
EXPRESS = "fairway_scheduler_express_batches_total"


def batch_figures(proc: FairwayProcess) -> dict[str, Any]:
    """What a quiet reading waits for, from the scheduler's own counters (whole phase):
    batches written, their mean readings and write time, and how many went express."""
    names = (f"{WRITE_SECONDS}_sum", f"{WRITE_SECONDS}_count", f"{BATCH_SIZE}_sum", EXPRESS)
    m = proc.metrics(*names)

    def total(name: str) -> float:
        return sum(m.get(name, {}).values())

    count = total(f"{WRITE_SECONDS}_count")
    return {
        "written": int(count),
        "express": int(total(EXPRESS)),
        "mean_readings": r(total(f"{BATCH_SIZE}_sum") / count) if count else None,
        "mean_write_ms": r(total(f"{WRITE_SECONDS}_sum") * 1000 / count) if count else None,
    }


def summarize(latencies: list[float]) -> dict[str, Any]:
    """Percentiles in milliseconds."""
    ms = [x * 1000 for x in latencies]
    return {
        "count": len(ms),
        "p50_ms": r(percentile(ms, 50)),
        "p90_ms": r(percentile(ms, 90)),
        "p99_ms": r(percentile(ms, 99)),
        "max_ms": r(max(ms)) if ms else math.nan,
        "mean_ms": r(sum(ms) / len(ms)) if ms else math.nan,
        "percentiles_ms": {str(q): r(percentile(ms, q)) for q in CDF_POINTS} if ms else {},
    }


def sample_timeline(
    env: Pipeline,
    proc: FairwayProcess,
    fifo: bool,
    stop: threading.Event,
    timeline: list[dict[str, Any]],
) -> None:
    """Once a second: what the scheduler stored and buffers, and what waits at the broker."""
    names = sorted({topology.tenant_queue_name(route(t, fifo)) for t in ALL})
    started = time.time()
    try:
        with env.channel() as ch:
            while not stop.wait(1.0):
                m = proc.metrics(LAG_COUNT, "fairway_scheduler_buffered")
                stored = label_values(m, LAG_COUNT, "tenant")  # by document tenant
                buffered = label_values(m, "fairway_scheduler_buffered", "tenant")
                ready = common.queue_counts(ch, names)
                timeline.append(
                    {
                        "t": r(time.time() - started, 1),
                        "stored_noisy": int(stored.get(NOISY, 0)),
                        "stored_quiet": int(sum(stored.get(t, 0) for t in QUIET)),
                        "buffered_noisy": int(buffered.get(NOISY, buffered.get(FIFO, 0))),
                        "buffered_quiet": int(sum(buffered.get(t, 0) for t in QUIET)),
                        "ready_noisy": ready.get(topology.tenant_queue_name(route(NOISY, fifo))),
                        "ready_quiet": 0
                        if fifo
                        else sum(ready[topology.tenant_queue_name(t)] for t in QUIET),
                    }
                )
    except Exception as exc:  # a diagnostic only: never fail the run over it
        timeline.append({"error": repr(exc)})


def latency_phase(name: str, fifo: bool, backlog: int, args: Any, capacity: float) -> dict:
    """One latency phase: optional flood backlog, then quiet + flood traffic."""
    flood_rate = args.quiet_rate * args.flood_factor if backlog else 0.0
    with pipeline(f"bench-nn-{name.replace('_', '-')}", dict.fromkeys(ALL, 1), fifo) as env:
        fill_s = fill(env, [NOISY] * backlog, fifo, "p", args.bundle) if backlog else 0.0
        with scheduler(env, f"{NAME}-{name}") as proc:
            if backlog:
                wait_stored(proc, 1)
            else:  # one message per tenant: every consumer is up
                warm_seq = list(ALL)
                fill(env, warm_seq, fifo, "w", args.bundle, wait=False)
                wait_stored(proc, len(warm_seq))
            time.sleep(args.warmup)
            t0 = time.time()
            stored0 = proc.metric_by(STORED, "tenant")

            def window_end() -> dict[str, Any]:
                t1 = time.time()
                stored1 = proc.metric_by(STORED, "tenant")
                with env.channel() as ch:
                    q = topology.tenant_queue_name(route(NOISY, fifo))
                    left = ch.queue_declare(q, passive=True).method.message_count
                served = {
                    k: r((v - stored0.get(k, 0.0)) / (t1 - t0)) for k, v in sorted(stored1.items())
                }
                return {"served_msg_s": served, "flood_backlog_left_at_window_end": left}

            drain = 30.0 + 3 * (backlog + flood_rate * args.duration) / max(capacity, 1.0)
            stop = threading.Event()
            timeline: list[dict[str, Any]] = []
            sampler = threading.Thread(
                target=sample_timeline, args=(env, proc, fifo, stop, timeline), daemon=True
            )
            sampler.start()
            out = load(
                env,
                proc,
                fifo=fifo,
                quiet_rate=args.quiet_rate,
                flood_rate=flood_rate,
                duration=args.duration,
                drain_timeout=drain,
                poll_s=args.poll_ms / 1000.0,
                bundle=args.bundle,
                on_window_end=window_end,
            )
            stop.set()
            sampler.join(10)
            out["histogram_p99_bound_ms"] = histogram_p99_bound(proc)
            out["batches"] = batch_figures(proc)
    latencies = out.pop("latencies")
    out["timeline"] = timeline
    result = {
        "queues": "one shared FIFO" if fifo else "one per tenant (DRR)",
        "flood_backlog_at_start": backlog,
        "flood_rate": flood_rate,
        "quiet_rate_per_tenant": args.quiet_rate,
        "fill_seconds": r(fill_s, 2),
        **summarize(latencies),
        **out,
    }
    if backlog:
        result["flood_backlogged_throughout"] = out["flood_backlog_left_at_window_end"] > 0
    say(
        f"latency {name}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
        f" ({result['count']} quiet messages, {result['unfinished']} unfinished)"
    )
    return result


# -- 3./4. served shares over a window ---------------------------------------------------------
def shares_phase(
    name: str,
    tenants: dict[str, int],
    fifo: bool,
    sequence: list[str],
    args: Any,
    **settings: Any,
) -> dict[str, Any]:
    """Pre-fill, start the scheduler, count what each tenant is served over the window."""
    with pipeline(f"bench-nn-{name.replace('_', '-')}", tenants, fifo, **settings) as env:
        fill_s = fill(env, sequence, fifo, "s", args.bundle)
        queue_of = {t: topology.tenant_queue_name(route(t, fifo)) for t in tenants}
        samples: list[tuple[float, dict[str, float], dict[str, int]]] = []
        with scheduler(env, f"{NAME}-{name}") as proc, env.channel() as ch:
            first = wait_stored(proc, 1)
            end = first + args.warmup + args.window + 0.5
            while True:
                m = proc.metrics(STORED, BUFFERED)
                stored = label_values(m, STORED, "tenant")
                ready = common.queue_counts(ch, sorted(set(queue_of.values())))
                # With bundles a backlogged tenant's readings may all sit in the
                # scheduler's buffer (its prefetch counts messages): waiting there counts.
                for tenant, held in label_values(m, BUFFERED, "tenant").items():
                    if tenant in queue_of and held:
                        ready[queue_of[tenant]] = ready.get(queue_of[tenant], 0) + int(held)
                now = time.time()
                samples.append((now, stored, ready))
                if now > end:
                    break
                time.sleep(0.25)
    i0 = next(i for i, s in enumerate(samples) if s[0] >= first + args.warmup)
    i1 = next((i for i, s in enumerate(samples) if s[0] >= samples[i0][0] + args.window), -1)
    (t0, s0, _), (t1, s1, ready1) = samples[i0], samples[i1]
    seconds = t1 - t0
    if fifo:
        # One queue served in order: the stored total says which positions were written
        # (readings in the order of the bundles the relay would publish).
        order = [t for t, n in bundled(sequence, args.bundle) for _ in range(n)]
        a, b = int(sum(s0.values())), int(sum(s1.values()))
        counts = Counter(order[a:b])
        served = {t: counts.get(t, 0) for t in tenants}
        backlogged = b < len(order) - env.settings.scheduler_buffer * max(args.bundle, 1)
    else:
        served = {t: int(s1.get(t, 0) - s0.get(t, 0)) for t in tenants}
        backlogged = all(ready1[queue_of[t]] > 0 for t in tenants)
    total = sum(served.values())
    weight_sum = sum(tenants.values())
    shares = {t: r(served[t] / total, 4) if total else 0.0 for t in tenants}
    target = {t: w / weight_sum for t, w in tenants.items()}
    rel_err = {t: r(abs(shares[t] / target[t] - 1), 4) for t in tenants}
    normalised = [served[t] / tenants[t] for t in tenants]
    result = {
        "queues": "one shared FIFO" if fifo else "one per tenant (DRR)",
        "scheduler_prefetch": env.settings.scheduler_prefetch,
        "prefill": dict(Counter(sequence)),
        "fill_seconds": r(fill_s, 2),
        "window_s": r(seconds, 2),
        "all_backlogged_at_window_end": backlogged,
        "served": served,
        "served_msg_s": {t: r(served[t] / seconds) for t in tenants},
        "total_msg_s": r(total / seconds),
        "shares": shares,
        "target_shares": {t: r(v, 4) for t, v in target.items()},
        "max_relative_share_error": max(rel_err.values()),
        "jain": r(common.jain([float(x) for x in served.values()]), 4),
        "jain_weight_normalised": r(common.jain(normalised), 4),
    }
    say(
        f"shares {name}: jain {result['jain']}, weight-normalised"
        f" {result['jain_weight_normalised']}, max share error"
        f" {result['max_relative_share_error']:.1%}, backlogged {backlogged}"
    )
    return result


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run every phase."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--quiet-rate", type=float, default=20.0, help="readings/s per quiet tenant")
    p.add_argument(
        "--bundle",
        type=int,
        default=None,
        help="readings per relay bundle (default the relay's bundle_max_readings; 0: single)",
    )
    p.add_argument("--flood-factor", type=int, default=100, help="noisy rate / quiet rate")
    p.add_argument("--duration", type=float, default=None, help="latency window, s (12 x scale)")
    p.add_argument("--window", type=float, default=None, help="share window, s (8 x scale)")
    p.add_argument("--warmup", type=float, default=1.5, help="s after the first write")
    p.add_argument("--poll-ms", type=float, default=10.0, help="scheduler metric poll interval")
    p.add_argument("--capacity", type=float, default=None, help="skip calibration: readings/s")
    p.add_argument("--margin", type=float, default=1.3, help="backlog safety factor")
    p.add_argument(
        "--variant-prefetch",
        type=int,
        default=1000,
        help="also run weighted DRR with this scheduler_prefetch (0: skip); not a target",
    )
    p.add_argument("--phases", default="latency,fairness,weighted", help="comma-separated subset")
    args = p.parse_args(argv)
    args.duration = args.duration or max(3.0, 12.0 * args.scale)
    args.window = args.window or max(3.0, 8.0 * args.scale)
    if args.bundle is None:
        args.bundle = Settings.from_env().bundle_max_readings
    phases = set(args.phases.split(","))

    if args.capacity:
        cal = {"rate": args.capacity, "given": True}
    else:
        cal = calibrate(common.scaled(6000, args.scale, 1000), args.bundle)
    capacity = cal["rate"]
    result = common.meta(
        NAME,
        args.scale,
        workload={
            "tenants": len(ALL),
            "quiet_rate_per_tenant": args.quiet_rate,
            "flood_rate": args.quiet_rate * args.flood_factor,
            "bundle_readings": args.bundle,
            "format": f"relay bundles of up to {args.bundle}" if args.bundle else "single",
            "latency_window_s": args.duration,
            "share_window_s": args.window,
            "warmup_s": args.warmup,
            "poll_ms": args.poll_ms,
            "buffer_budget": Settings.from_env().scheduler_buffer,
        },
        calibration=cal,
    )
    targets: dict[str, Any] = {}

    if "latency" in phases:
        net = capacity - args.quiet_rate * (args.flood_factor + len(QUIET))
        span = args.warmup + args.duration + 2.0
        backlog = max(2000, int(args.margin * max(net, 0.0) * span))
        lat = {
            "drr_unloaded": latency_phase("drr_unloaded", False, 0, args, capacity),
            "drr_flood": latency_phase("drr_flood", False, backlog, args, capacity),
            "fifo_flood": latency_phase("fifo_flood", True, backlog, args, capacity),
        }
        result["latency"] = lat
        unloaded, drr, fifo = (
            lat[k]["p99_ms"] for k in ("drr_unloaded", "drr_flood", "fifo_flood")
        )
        result["latency_ratios"] = {
            "drr_flood_p99/drr_unloaded_p99": ratio(drr, unloaded),
            "fifo_flood_p99/drr_flood_p99": ratio(fifo, drr, 1),
            "fifo_flood_p50/drr_flood_p50": ratio(
                lat["fifo_flood"]["p50_ms"], lat["drr_flood"]["p50_ms"], 1
            ),
        }
        targets["quiet p99 under flood <= 2x unloaded p99"] = {
            "value": ratio(drr, unloaded),
            "met": drr <= 2 * unloaded,
        }
        targets["quiet p99 under flood >= 20x better than FIFO"] = {
            "value": ratio(fifo, drr, 1),
            "met": fifo >= 20 * drr,
        }

    span = args.warmup + args.window + 1.5
    if "fairness" in phases:
        per_quiet = int(args.margin * capacity / len(ALL) * span) + 500
        total = per_quiet * len(ALL)
        fair = {
            "drr": shares_phase(
                "fair_drr",
                dict.fromkeys(ALL, 1),
                False,
                interleave(dict.fromkeys(ALL, per_quiet)),
                args,
            ),
            "fifo": shares_phase(
                "fair_fifo", dict.fromkeys(ALL, 1), True, noisy_arrivals(total), args
            ),
        }
        result["fairness"] = fair
        targets["Jain >= 0.99 (DRR, 10 backlogged tenants)"] = {
            "value": fair["drr"]["jain"],
            "met": fair["drr"]["jain"] >= 0.99 and fair["drr"]["all_backlogged_at_window_end"],
        }

    if "weighted" in phases:
        weight_sum = sum(WEIGHTS.values())
        counts = {  # every tenant gets at least a fifth, in case weights are not honoured
            t: int(args.margin * capacity * max(w / weight_sum, 0.2) * span) + 500
            for t, w in WEIGHTS.items()
        }
        total = sum(counts.values())
        equal = {t: total // len(WEIGHTS) for t in WEIGHTS}
        wres = {
            "drr": shares_phase("weighted_drr", WEIGHTS, False, interleave(counts), args),
            "fifo": shares_phase("weighted_fifo", WEIGHTS, True, interleave(equal), args),
        }
        if args.variant_prefetch:
            wres[f"drr_prefetch_{args.variant_prefetch}"] = shares_phase(
                f"weighted_drr_prefetch{args.variant_prefetch}",
                WEIGHTS,
                False,
                interleave(counts),
                args,
                scheduler_prefetch=args.variant_prefetch,
            )
        result["weighted"] = wres
        targets["weighted shares within 5% of weights (DRR)"] = {
            "value": wres["drr"]["max_relative_share_error"],
            "met": wres["drr"]["max_relative_share_error"] <= 0.05
            and wres["drr"]["all_backlogged_at_window_end"],
        }

    result["targets"] = targets
    common.emit(result)


if __name__ == "__main__":
    main()
