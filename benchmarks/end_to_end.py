"""End to end: simulated devices -> relay -> scheduler -> MongoDB, vs the database ceiling.

One run, two measurements on fresh databases:

* ``insert_many_ceiling``: the database's own rate for the same documents, inserted
  straight into FerretDB in batches of ``batch_size`` from one process (one thread,
  and, for reference, ``writers`` threads like the scheduler's writer pool), into a
  ``telemetry`` collection with the same indexes.
* ``pipeline``: :class:`fairway.devtools.simulator.Simulator` (in this process, streamed
  confirms) offers ``--rate`` msg/s from 10 tenants x 5 registered devices for
  ``--duration`` seconds; one ``python -m fairway relay`` and one
  ``python -m fairway scheduler`` (MongoDB sink) run as children. Sustained
  throughput = documents stored per second (the scheduler's stored counter) over the
  steady part of the run (after ``--warmup`` s). Offer more than the pipeline can
  take and this is its capacity; the result says whether it kept up.

Everything shares the machine's 2 cores (broker, database, relay, scheduler and the
simulator itself), so the ratio pipeline / ceiling is the figure to read.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks import common
from benchmarks.common import r, ratio, say
from fairway.devtools import simulator
from fairway.kernel import topology
from fairway.kernel.contract import Reading, tenant_message, to_document
from fairway.kernel.settings import Settings
from fairway.storage import mongo, registry
from tests.harness import Pipeline

NAME = "end_to_end"
STORED = "fairway_scheduler_stored_total"
TENANTS = simulator.tenant_ids(10)
DEVICES_PER_TENANT = 5


def provision(env: Pipeline) -> dict[str, list[str]]:
    """Tenants with their queues, and registered devices."""
    by_tenant = {t: simulator.device_ids(t, DEVICES_PER_TENANT) for t in TENANTS}
    with env.channel() as ch:
        for tenant in TENANTS:
            topology.tenant_queue(tenant, env.settings.tenant_max_backlog, env.settings).declare(ch)
    for tenant, devices in by_tenant.items():
        registry.create_tenant(env.db, tenant, 1, env.settings.tenant_max_backlog)
        for device in devices:
            registry.register_device(env.db, tenant, device)
    return by_tenant


def sample_documents(count: int) -> list[dict[str, Any]]:
    """Documents shaped exactly like the pipeline's (relay body -> to_document)."""
    now = time.time()
    docs = []
    for i in range(count):
        tenant = TENANTS[i % len(TENANTS)]
        device = f"{tenant}-d{(i // len(TENANTS)) % DEVICES_PER_TENANT + 1:04d}"
        reading = Reading(device, "env", f"c{i}", now, {"temp": 21.5 + i % 7, "ok": True})
        docs.append(to_document(tenant_message(tenant, reading, now)))
    return docs


def ceiling(count: int, batch: int, threads: int) -> dict[str, Any]:
    """``insert_many(ordered=False)`` of ``count`` documents in batches, on a fresh db."""
    docs = sample_documents(count)
    batches = [docs[i : i + batch] for i in range(0, len(docs), batch)]
    with common.bench_env("bench-e2e-ceiling") as env:
        coll = env.db[mongo.TELEMETRY]
        started = time.perf_counter()
        if threads == 1:
            for b in batches:
                coll.insert_many(b, ordered=False)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda b: coll.insert_many(b, ordered=False), batches))
        seconds = time.perf_counter() - started
    return {
        "documents": count,
        "batch": batch,
        "threads": threads,
        "seconds": r(seconds, 2),
        "rate": r(count / seconds),
    }


def pipeline(args: Any) -> dict[str, Any]:
    """Simulator -> relay -> scheduler -> MongoDB; stored docs/s over the steady window."""
    with common.bench_env("bench-e2e") as env:
        started = time.perf_counter()
        by_tenant = provision(env)
        say(
            f"provisioned {len(TENANTS)} tenants x {DEVICES_PER_TENANT} devices"
            f" in {time.perf_counter() - started:.1f} s"
        )
        with (
            common.fairway_process(
                ["scheduler", "--sink", "mongo"], env.settings, f"{NAME}-scheduler"
            ) as sched,
            common.fairway_process(["relay"], env.settings, f"{NAME}-relay") as relay,
        ):
            sched.wait_ready()
            relay.wait_ready()
            samples: list[tuple[float, float]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.5):
                    samples.append((time.monotonic(), sched.metric_sum(STORED)))

            sampler = threading.Thread(target=sample, daemon=True)
            t0 = time.monotonic()
            sampler.start()
            summary = simulator.Simulator(
                env.settings,
                simulator.weighted_devices(by_tenant, {}),
                rate=args.rate,
                duration=args.duration,
                progress=False,
            ).run()
            published_s = time.monotonic() - t0
            stop.set()
            sampler.join(5)
            stored_at_end = sched.metric_sum(STORED)
            with env.channel() as ch:
                ingest_left = ch.queue_declare(topology.INGEST, passive=True).method.message_count
            # Then let it drain: everything confirmed must end up stored.
            drain_started = time.monotonic()
            drained = True
            try:
                common.poll_until(
                    lambda: sched.metric_sum(STORED) >= summary.confirmed,
                    args.drain_timeout,
                    0.5,
                    "drain",
                )
            except TimeoutError:
                drained = False
            drain_s = time.monotonic() - drain_started
            stored_total = sched.metric_sum(STORED)
            relay_rss = relay.status().get("VmHWM", 0) / 1024
            sched_rss = sched.status().get("VmHWM", 0) / 1024
        documents = env.db[mongo.TELEMETRY].count_documents({})
        with env.channel() as ch:
            rejected = ch.queue_declare(topology.REJECTED, passive=True).method.message_count
    window = [(t, n) for t, n in samples if t - t0 >= args.warmup]
    if len(window) >= 2:
        (ta, na), (tb, nb) = window[0], window[-1]
        sustained = (nb - na) / (tb - ta)
        window_s = tb - ta
    else:
        sustained, window_s = 0.0, 0.0
    return {
        "offered_rate": args.rate,
        "duration_s": args.duration,
        "simulator": {
            "sent": summary.sent,
            "confirmed": summary.confirmed,
            "nacked": summary.nacked,
            "confirmed_rate": r(summary.rate),
            "seconds": r(published_s, 2),
        },
        "steady_window_s": r(window_s, 2),
        "stored_rate": r(sustained),
        "kept_up": ingest_left < args.rate,  # less than 1 s of backlog left at the end
        "ingest_backlog_at_end": ingest_left,
        "drained": drained,
        "drain_seconds": r(drain_s, 2),
        "drain_rate": r((stored_total - stored_at_end) / drain_s) if drain_s > 0.5 else None,
        "stored_total": int(stored_total),
        "documents_in_db": documents,
        "rejected": rejected,
        "rss_mb": {"relay": r(relay_rss), "scheduler": r(sched_rss)},
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run both measurements."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=10_000.0, help="offered msg/s")
    p.add_argument("--duration", type=float, default=None, help="s of publishing (30 x scale)")
    p.add_argument("--warmup", type=float, default=None, help="s excluded at the start")
    p.add_argument("--ceiling-docs", type=int, default=None, help="default 100,000 x scale")
    p.add_argument("--drain-timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    args.duration = args.duration or max(5.0, 30.0 * args.scale)
    args.warmup = args.warmup if args.warmup is not None else min(5.0, args.duration / 4)
    n_docs = args.ceiling_docs or common.scaled(100_000, args.scale, 5000)
    settings = Settings.from_env()

    ceil1 = ceiling(n_docs, settings.batch_size, 1)
    say(f"insert_many ceiling, 1 thread: {ceil1['rate']:.0f} docs/s")
    ceiln = ceiling(n_docs, settings.batch_size, settings.writers)
    say(f"insert_many ceiling, {settings.writers} threads: {ceiln['rate']:.0f} docs/s")
    pipe = pipeline(args)
    say(f"pipeline: {pipe['stored_rate']:.0f} stored docs/s (offered {args.rate:.0f})")
    result = common.meta(
        NAME,
        args.scale,
        insert_many_ceiling={"one_thread": ceil1, f"{settings.writers}_threads": ceiln},
        pipeline=pipe,
        ratios={
            "pipeline/insert_many_1_thread": ratio(pipe["stored_rate"], ceil1["rate"]),
            f"pipeline/insert_many_{settings.writers}_threads": ratio(
                pipe["stored_rate"], ceiln["rate"]
            ),
        },
    )
    # Issue 11's targets for single-reading messages: the rate, and the share of the
    # database's own insert_many ceiling measured in the same run.
    share = result["ratios"]["pipeline/insert_many_1_thread"]
    result["targets"] = {
        "stored_rate>=12000": {
            "value": pipe["stored_rate"],
            "met": pipe["stored_rate"] >= 12_000,
        },
        "pipeline/insert_many_1_thread>=0.8": {
            "value": share,
            "met": share is not None and share >= 0.8,
        },
    }
    common.emit(result)


if __name__ == "__main__":
    main()
