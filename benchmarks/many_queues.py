"""Many queues: drain 200 queues x 500 messages, seed design vs Fairway's scheduler.

The seed talk's benchmark: 500 messages published once to a fanout exchange bound
to 200 queues (100,000 deliveries), then drained. In one run, re-filling between
contenders:

(a) ``seed``: the talk's consumer, pika ``SelectConnection``, 32 connections (one
    channel each) consuming their share of the 200 queues, prefetch 32, one
    ``basic_ack(multiple=True)`` every 32 messages. Runs as a child process
    (``--consume-seed``) and reports its own first-delivery and last-ack times.
(b) ``scheduler_null``: ``python -m fairway scheduler --sink null`` (one connection,
    a channel per tenant queue, DRR, batches, ack after the "write").
(c) ``scheduler_mongo``: the same with the MongoDB sink.

Bodies are the relay's tenant-queue format of today: bundles (``{"tenant", "readings"}``
with the ``x-fairway-readings`` header, built by the contract's own functions) of
``--bundle`` readings, 1 by default (what the relay publishes for a reading no other
joins within its linger: the seed's one-reading messages, in today's format), 50 for
full bundles; ``--bundle 0`` is the single-reading format before bundles. Rates are
messages (the seed's unit); ``readings_s`` alongside. For (a) and (b) the queues are
filled through the fanout (every queue gets the same 500 bodies). The MongoDB sink
derives ``_id`` from the body, so through the fanout 99.5 % of its writes would be
duplicate-key no-ops; for (c) each queue is therefore filled with the same number of
bodies of the same size naming its own tenant, routed through ``tenants``, and every
write is a real insert.

Drain rate = messages / (first delivery -> last message settled). For the
scheduler, first delivery is seen by polling the first queues' ready counts
(passive ``queue.declare``), and the end by polling its
``fairway_scheduler_stored_total`` counter (incremented just before the ack),
interpolated between polls; each poll of that one metric costs the scheduler
about 2 ms of its GIL, a small handicap of the scheduler, not of the baseline.
After each contender stops, every queue must be empty (unacked deliveries of a
stopped consumer would be requeued and show up as ready).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import pika
from pika.adapters.select_connection import IOLoop

from benchmarks import common
from benchmarks.common import cpu_s, r, say
from fairway.kernel import topology
from fairway.kernel.contract import Reading, tenant_message
from fairway.storage import registry
from tests.harness import Pipeline

NAME = "many_queues"
FANOUT = "bench.fanout"
FANOUT_TENANT = "mqall"  # same length as the mqNNN tenant ids, so bodies are the same size
PROPS = pika.BasicProperties(delivery_mode=2, content_type="application/json")


def tenant_ids(count: int) -> list[str]:
    """``mq000`` ... (sorted like the scheduler lists them)."""
    return [f"mq{i:03d}" for i in range(count)]


def body(tenant: str, i: int, now: float, bundle: int = 1) -> tuple[bytes, Any]:
    """One relay-format tenant-queue message (body, properties): a bundle of ``bundle``
    readings, or with ``bundle`` 0 a single reading in the format before bundles."""

    def reading(j: int) -> Reading:
        return Reading(
            device="d0001", stream="env", message_id=f"m{j:08d}", ts=now, values={"temp": 21.5}
        )

    if not bundle:
        return tenant_message(tenant, reading(i), now), PROPS
    readings = [reading(i * bundle + k) for k in range(bundle)]
    return common.bundle(tenant, readings, now), common.bundle_props(bundle)


# -- the seed design's consumer (runs in a child process) ---------------------------------
class SeedConsumer:
    """32 SelectConnections on one I/O loop; prefetch 32; ack multiple every 32."""

    def __init__(
        self,
        url: str,
        queues: list[str],
        per_queue: int,
        connections: int,
        prefetch: int,
        ack_every: int,
    ) -> None:
        self.ioloop = IOLoop()
        self.params = pika.URLParameters(url)
        self.prefetch, self.ack_every = prefetch, ack_every
        shares = [queues[i::connections] for i in range(connections)]
        self.shares = [s for s in shares if s]
        self.per_queue = per_queue
        self.expected = len(queues) * per_queue
        self.total = 0
        self.first: float | None = None
        self.last: float | None = None
        self.finished = 0
        self.open = 0
        self.acks = 0
        self.cpu_first = self.cpu_last = 0.0
        self.connections: list[Any] = []

    def run(self) -> dict[str, Any]:
        """Consume everything, then close; return timings."""
        for share in self.shares:
            self._connect(share)
        self.ioloop.start()
        return {
            "count": self.total,
            "first": self.first,
            "last": self.last,
            "acks": self.acks,
            "connections": len(self.shares),
            "cpu_s": self.cpu_last - self.cpu_first,
        }

    def _connect(self, share: list[str]) -> None:
        state = {"count": 0, "unacked": 0, "expected": len(share) * self.per_queue}

        def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
            if self.first is None:
                self.first = time.time()
                self.cpu_first = time.process_time()
            state["count"] += 1
            state["unacked"] += 1
            self.total += 1
            done = state["count"] == state["expected"]
            if state["unacked"] >= self.ack_every or done:
                ch.basic_ack(method.delivery_tag, multiple=True)
                self.acks += 1
                state["unacked"] = 0
            if done:
                self.finished += 1
                if self.finished == len(self.shares):
                    self.last = time.time()
                    self.cpu_last = time.process_time()
                    for conn in self.connections:
                        conn.close()

        def on_channel(ch: Any) -> None:
            def consume(_frame: Any) -> None:
                for queue in share:
                    ch.basic_consume(queue, on_message)

            ch.basic_qos(prefetch_count=self.prefetch, callback=consume)

        def on_closed(_conn: Any, _reason: Any) -> None:
            self.open -= 1
            if self.open == 0:
                self.ioloop.stop()

        def on_error(_conn: Any, exc: Exception) -> None:
            print(f"connect failed: {exc!r}", file=sys.stderr)
            self.ioloop.stop()

        self.open += 1
        conn = pika.SelectConnection(
            self.params,
            on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
            on_open_error_callback=on_error,
            on_close_callback=on_closed,
            custom_ioloop=self.ioloop,
        )
        self.connections.append(conn)


# -- set-up and filling ------------------------------------------------------------------
def provision(env: Pipeline, tenants: list[str]) -> None:
    """Tenant docs for the scheduler; tenant queues (its exact arguments) bound to the fanout."""
    max_backlog = env.settings.tenant_max_backlog
    with env.channel() as ch:
        ch.exchange_declare(FANOUT, "fanout", durable=True)
        for tenant in tenants:
            spec = topology.tenant_queue(tenant, max_backlog, env.settings)
            spec.declare(ch)
            ch.queue_bind(spec.name, FANOUT, "")
    for tenant in tenants:
        registry.create_tenant(env.db, tenant, 1, max_backlog)


def queue_names(tenants: list[str]) -> list[str]:
    """``tenant.<id>`` for each tenant."""
    return [topology.tenant_queue_name(t) for t in tenants]


def fill(env: Pipeline, tenants: list[str], per_queue: int, via: str, bundle: int) -> float:
    """Fill every queue with ``per_queue`` messages; return seconds taken."""
    started = time.perf_counter()
    now = time.time()
    with env.channel() as ch:
        if via == "fanout":
            items: Any = (
                (FANOUT, "", *body(FANOUT_TENANT, i, now, bundle)) for i in range(per_queue)
            )
        else:
            items = (
                (topology.TENANTS, t, *body(t, i, now, bundle))
                for i in range(per_queue)
                for t in tenants
            )
        common.publish_all(ch, items)
        common.wait_ready(ch, queue_names(tenants), len(tenants) * per_queue, what="fill")
    return time.perf_counter() - started


def leftover(env: Pipeline, tenants: list[str]) -> int:
    """Ready messages left in all queues."""
    with env.channel() as ch:
        return sum(common.queue_counts(ch, queue_names(tenants)).values())


# -- contenders --------------------------------------------------------------------------
def run_seed(env: Pipeline, tenants: list[str], per_queue: int, args: Any) -> dict[str, Any]:
    """(a) the seed design's consumer in a child process."""
    child = common.python_module(
        "benchmarks.many_queues",
        [
            "--consume-seed",
            "--amqp-url",
            env.settings.amqp_url,
            "--queues",
            str(len(tenants)),
            "--per-queue",
            str(per_queue),
            "--connections",
            str(args.connections),
            "--prefetch",
            str(args.prefetch),
            "--ack-every",
            str(args.ack_every),
        ],
        f"{NAME}-seed",
    )
    out, _ = child.communicate(timeout=args.timeout)
    if child.returncode != 0:
        raise RuntimeError(f"seed consumer failed ({child.returncode}); see out/logs")
    got = json.loads(out)
    seconds = got["last"] - got["first"]
    return {
        "messages": got["count"],
        "seconds": r(seconds, 3),
        "rate": r(got["count"] / seconds),
        "acks_sent": got["acks"],
        "connections": got["connections"],
        "cpu_us_per_msg": r(got["cpu_s"] * 1e6 / got["count"], 2),
    }


def run_scheduler(
    env: Pipeline,
    tenants: list[str],
    per_queue: int,
    sink: str,
    label: str,
    timeout: float,
    readings: int = 1,
) -> dict[str, Any]:
    """(b)/(c) ``python -m fairway scheduler --sink <sink>``, timed from outside.

    Its stored counter counts readings: ``readings`` per message."""
    messages = len(tenants) * per_queue
    expected = messages * readings
    first_queues = queue_names(tenants)[:4]
    metric = "fairway_scheduler_stored_total"
    with (
        env.channel() as ch,
        common.fairway_process(["scheduler", "--sink", sink], env.settings, label) as proc,
    ):
        spawned = time.time()
        # First delivery: a ready count of one of the first-opened queues drops.
        while True:
            counts = common.queue_counts(ch, first_queues)
            first = time.time()
            if any(c < per_queue for c in counts.values()):
                cpu_first = cpu_s(proc.pid)
                break
            if not proc.alive():
                raise RuntimeError(f"scheduler exited; see {proc.log_path}")
            if first - spawned > timeout:
                raise TimeoutError("scheduler never consumed")
            time.sleep(0.001)
        proc.wait_ready()
        # Last message settled: poll the stored counter, interpolate the crossing.
        prev_t, prev_n = first, 0.0
        polls = 0
        while True:
            time.sleep(0.1)
            now = time.time()
            n = proc.metric_sum(metric)
            polls += 1
            if n >= expected:
                last = prev_t + (now - prev_t) * (expected - prev_n) / max(n - prev_n, 1e-9)
                cpu_last = cpu_s(proc.pid)  # up to 0.1 s of idle polling past the end
                break
            if now - first > timeout:
                raise TimeoutError(f"{label}: {n} of {expected} stored after {timeout} s")
            prev_t, prev_n = now, n
        status = proc.status()
    left = leftover(env, tenants)
    seconds = last - first
    result = {
        "messages": messages,
        "seconds": r(seconds, 3),
        "rate": r(messages / seconds),
        "readings_s": r(expected / seconds),
        "cpu_us_per_msg": r((cpu_last - cpu_first) * 1e6 / messages, 2),
        "startup_s": r(first - spawned, 3),
        "metric_polls": polls,
        "rss_mb": r(status.get("VmHWM", 0) / 1024),
        "left_in_queues": left,
    }
    if left:
        result["error"] = f"{left} messages left in the queues after the scheduler stopped"
    return result


def mongo_stored(env: Pipeline) -> int:
    """Readings in ``telemetry``, in either layout (a full scan on FerretDB: only at the
    end)."""
    return common.stored_tally(env.db)["readings"]


def one_round(args: Any, order: list[str]) -> dict[str, dict[str, Any]]:
    """Run each contender once on its own vhost/database (same sizes)."""
    tenants = tenant_ids(args.queues)
    results: dict[str, dict[str, Any]] = {}
    for contender in order:
        with common.bench_env(f"bench-mq-{contender.split('_')[-1]}") as env:
            provision(env, tenants)
            via = "direct" if contender == "scheduler_mongo" else "fanout"
            fill_s = fill(env, tenants, args.per_queue, via, args.bundle)
            say(f"{contender}: filled {args.queues}x{args.per_queue} via {via} in {fill_s:.1f} s")
            if contender == "seed":
                res = run_seed(env, tenants, args.per_queue, args)
            else:
                sink = contender.split("_")[1]
                res = run_scheduler(
                    env,
                    tenants,
                    args.per_queue,
                    sink,
                    f"{NAME}-{contender}",
                    args.timeout,
                    max(args.bundle, 1),
                )
                if sink == "mongo":
                    # Readings: the key predates one document per device batch.
                    res["documents_stored"] = mongo_stored(env)
            res["fill_via"] = via
            res["fill_seconds"] = r(fill_s, 2)
            say(f"{contender}: {res['rate']:.0f} msg/s over {res['seconds']:.2f} s")
            results[contender] = res
    return results


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; run the benchmark (or, with --consume-seed, be contender a)."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--queues", type=int, default=200)
    p.add_argument("--per-queue", type=int, default=None, help="default 500 x scale")
    p.add_argument("--connections", type=int, default=32, help="seed consumer connections")
    p.add_argument("--prefetch", type=int, default=32, help="seed consumer prefetch")
    p.add_argument("--ack-every", type=int, default=32, help="seed consumer ack batching")
    p.add_argument("--rounds", type=int, default=5, help="repeat all contenders (order flips)")
    p.add_argument(
        "--contenders", default="seed,scheduler_null,scheduler_mongo", help="comma-separated"
    )
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument(
        "--bundle", type=int, default=1, help="readings per relay bundle (0: single format)"
    )
    p.add_argument("--consume-seed", action="store_true", help=argparse_hidden())
    p.add_argument("--amqp-url", help=argparse_hidden())
    args = p.parse_args(argv)
    if args.per_queue is None:
        args.per_queue = common.scaled(500, args.scale)

    if args.consume_seed:
        queues = queue_names(tenant_ids(args.queues))
        consumer = SeedConsumer(
            args.amqp_url, queues, args.per_queue, args.connections, args.prefetch, args.ack_every
        )
        print(json.dumps(consumer.run()))
        return

    contenders = args.contenders.split(",")
    rounds = []
    for i in range(args.rounds):
        order = contenders if i % 2 == 0 else contenders[::-1]
        rounds.append(one_round(args, order))
    rates = {c: statistics.median(rd[c]["rate"] for rd in rounds) for c in contenders}
    base = rates.get("seed", 0.0)
    result = common.meta(
        NAME,
        args.scale,
        workload={
            "queues": args.queues,
            "per_queue": args.per_queue,
            "deliveries": args.queues * args.per_queue,
            "bundle_readings": args.bundle,
            "format": f"relay bundles of {args.bundle}" if args.bundle else "single",
            "body_bytes": len(body(FANOUT_TENANT, 0, time.time(), args.bundle)[0]),
            "seed_consumer": {
                "connections": args.connections,
                "prefetch": args.prefetch,
                "ack_multiple_every": args.ack_every,
            },
        },
        rounds=rounds,
        rate_msg_s={c: r(v) for c, v in rates.items()},
        ratios={
            f"{c}/seed": common.median_ratio(rounds, c, "seed")
            for c in contenders
            if c != "seed" and base
        },
        ratios_per_round={
            f"{c}/seed": common.paired_ratios(rounds, c, "seed")
            for c in contenders
            if c != "seed" and base
        },
        cpu_us_per_msg={
            c: r(statistics.median(rd[c]["cpu_us_per_msg"] for rd in rounds), 2) for c in contenders
        },
        cpu_ratios={
            f"{c}/seed": common.median_ratio(rounds, c, "seed", "cpu_us_per_msg")
            for c in contenders
            if c != "seed" and base
        },
        ratio_note="ratios: median over rounds of each round's ratio (rate_msg_s: medians);"
        " cpu: the consumer process's user + system CPU from first delivery to the end",
    )
    if "scheduler_null" in rates and base:
        value = common.median_ratio(rounds, "scheduler_null", "seed") or 0.0
        result["targets"] = {"scheduler_null/seed >= 1.0": {"value": value, "met": value >= 1.0}}
    common.emit(result)


def argparse_hidden() -> str:
    """Help text of internal flags."""
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
