"""Single node vs a three-node cluster on this machine, in one run; two schedulers' fairness.

One machine hosts every node, so only ratios within the run mean anything. The run
starts its own brokers through ``scripts/services.sh``: a single node
(:class:`tests.harness.LocalNode`, classic queues, the single-node default) and a
three-node cluster (:class:`tests.harness.LocalCluster`, quorum queues, the Ansible
role's policies), and a FerretDB of its own on a PostgreSQL database of its own
(``benchmarks.write_cost.private_server``), so the CPU it counts is the run's.

1. ``drain``: 10 tenants x 5 devices; ``ingest.<tenant>`` pre-filled with
   ``--drain`` readings by devices (the simulator, confirms), then one relay and one
   scheduler (on different nodes of the cluster) drain them into the database. Drain
   rate, and CPU per stored reading from ``/proc`` between 5 % and 95 % of the drain,
   per process (relay, scheduler, broker: every node's VM, database: FerretDB and its
   PostgreSQL backends), as issue 11 counts it; the load generator is not counted.
2. ``latency``: a quiet tenant's device publishes 20 readings/s with confirms for
   ``--window`` s, unloaded and then while a flood tenant's devices keep a backlog
   (pre-filled, and topped up at the measured drain rate). Publish-to-stored latency
   of every quiet reading (from the scheduler's per-tenant counter, polled every
   20 ms: one device, one queue, stored in order), p50 and p99, and the ratio
   flood/unloaded per broker.
3. ``failover`` (cluster): devices publish at half the drain rate and a quiet tenant at
   20/s; the node leading the most tenant queues is killed (``kill -9``) and started
   again 5 s later. The longest pause in storing per tenant around the kill, and how
   long each client took to be connected again.
4. ``fairness``: four tenants with weights 1, 2, 3, 4, their tenant queues pre-filled
   beyond what a window can serve; served readings per tenant over ``--window`` s,
   from the schedulers' counters: one scheduler on the single node, one on the
   cluster, and two on the cluster connected to different nodes. Jain's index over
   served/weight (1.0: exactly weighted), for both schedulers together and each alone.

Targets (decisions of issue 14; ratios, one machine): two competing schedulers keep the
weighted shares (Jain >= 0.95); a node kill pauses storing at most 10 s for any tenant.
The cluster's drain rate and CPU per reading against the single node's, and the quiet
p99 ratios, are reported without a target.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pika

from benchmarks import common
from benchmarks.common import cpu_s, jain, percentile, r, ratio, say
from benchmarks.write_cost import PrivateServer, private_server
from fairway.amqp import management
from fairway.devtools.simulator import Simulator, device_ids, tenant_ids, weighted_devices
from fairway.kernel import topology
from fairway.kernel.contract import Reading, tenant_message
from fairway.kernel.settings import Settings
from tests.harness import (
    FairwayProcess,
    LocalCluster,
    LocalNode,
    Pipeline,
    apply_policies,
    quorum_policies,
)

NAME = "cluster"
STORED = "fairway_scheduler_stored_total"
DUPLICATES = "fairway_scheduler_duplicates_total"
WEIGHTS = {"w1": 1, "w2": 2, "w3": 3, "w4": 4}
QUIET, FLOOD = "quiet", "flood"
QUIET_RATE = 20.0


# -- the two brokers -------------------------------------------------------------------
@dataclass
class Broker:
    """How to reach one contender and which processes are its broker."""

    name: str
    url: Callable[[int, str], str]  # (first node, quoted vhost) -> FAIRWAY_AMQP_URL
    mgmt_url: str
    queue_type: str
    pids: Callable[[], list[int]]
    cluster: LocalCluster | None = None

    def cpu(self) -> float:
        """CPU seconds of every node's VM."""
        return sum(cpu_s(pid) for pid in self.pids())


@contextmanager
def environment(broker: Broker, server: PrivateServer, prefix: str) -> Iterator[Pipeline]:
    """A fresh vhost on ``broker`` and database on the private server."""
    common.LOGS.mkdir(parents=True, exist_ok=True)
    base = Settings.from_env(
        amqp_url=broker.url(1, "%2F"),
        rabbitmq_mgmt_url=broker.mgmt_url,
        mongo_url=server.mongo_url,
        postgres_url=server.private_url,
        queue_type=broker.queue_type,
    )
    with Pipeline(
        base,
        common.LOGS,
        prefix=f"{prefix}-{broker.name}",
        mgmt_url=broker.mgmt_url,
        channel_heartbeat=0,
        tenant_refresh_s=0.5,
    ) as env:
        if broker.cluster is not None:
            apply_policies(broker.mgmt_url, env.name, quorum_policies())
        yield env


def url_for(broker: Broker, env: Pipeline, first: int) -> str:
    """The broker's addresses from node ``first`` on, on ``env``'s vhost."""
    return broker.url(first, urllib.parse.quote(env.name, safe=""))


def start(env: Pipeline, broker: Broker, role: str, name: str, first: int) -> FairwayProcess:
    """``fairway <role>`` connected first to node ``first`` (the single node: its only one)."""
    args = ["--sink", "mongo"] if role == "scheduler" else []
    return env.start(
        role, *args, name=f"{NAME}-{broker.name}-{name}", amqp_url=url_for(broker, env, first)
    )


def provision(env: Pipeline, tenants: dict[str, int]) -> dict[str, list[str]]:
    """Tenants (with weights) and their devices."""
    by_tenant = {t: device_ids(t, 5) for t in tenants}
    for tenant, devices in by_tenant.items():
        env.tenant(tenant, weight=tenants[tenant])
        for device in devices:
            env.device(tenant, device)
    return by_tenant


def ingest_depth(env: Pipeline, tenants: list[str]) -> int:
    """Readings waiting in the tenants' ingest queues."""
    return sum(env.depth(topology.ingest_queue_name(t)) for t in tenants)


# -- 1. drain --------------------------------------------------------------------------
def drain(broker: Broker, server: PrivateServer, readings: int) -> dict[str, Any]:
    """Pre-filled ingest queues drained by one relay and one scheduler; CPU per reading."""
    with environment(broker, server, "bench-cl-drain") as env:
        tenants = tenant_ids(10)
        by_tenant = provision(env, dict.fromkeys(tenants, 1))
        fill = Simulator(
            env.settings,
            weighted_devices(by_tenant, {}),
            rate=50_000,
            total=readings,
            progress=False,
        ).run()
        assert fill.confirmed == readings, fill
        common.poll_until(lambda: ingest_depth(env, tenants) >= readings, 120, 0.5, "the fill")
        say(f"{broker.name}: {readings} readings waiting in ingest queues")
        relay = start(env, broker, "relay", "drain-relay", 1)
        sched = start(env, broker, "scheduler", "drain-scheduler", 2)

        def snapshot() -> tuple[float, dict[str, float], dict[int, float]]:
            return (
                time.monotonic(),
                {"relay": cpu_s(relay.pid), "scheduler": cpu_s(sched.pid), "broker": broker.cpu()},
                server.snapshot(),
            )

        def written() -> float:  # stored, or found stored by a retried write
            found = sched.metrics(STORED, DUPLICATES)
            return sum(sum(found.get(name, {}).values()) for name in (STORED, DUPLICATES))

        marks: dict[str, tuple[float, float, dict[str, float], dict[int, float]]] = {}
        deadline = time.monotonic() + 600
        while "end" not in marks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{broker.name}: the drain did not reach 95 % in 600 s")
            stored = written()
            if "start" not in marks and stored >= 0.05 * readings:
                marks["start"] = (stored, *snapshot())
            if stored >= 0.95 * readings:
                marks["end"] = (stored, *snapshot())
            time.sleep(0.1)
        (n0, t0, cpu0, db0), (n1, t1, cpu1, _db1) = marks["start"], marks["end"]
        database = server.since(db0)
        stored = n1 - n0
        per_reading = {k: r((cpu1[k] - cpu0[k]) / stored * 1e6) for k in cpu0}
        per_reading["database"] = r(database / stored * 1e6)
        per_reading["total"] = r(sum(v for k, v in per_reading.items()))
    rate = stored / (t1 - t0)
    say(f"{broker.name}: drain {rate:.0f} readings/s, {per_reading['total']} us CPU per reading")
    return {"readings": readings, "drain_rate": r(rate), "cpu_us_per_reading": per_reading}


# -- 2. quiet latency -----------------------------------------------------------------------
def latency(
    broker: Broker, server: PrivateServer, window: float, flood_rate: float | None
) -> dict[str, Any]:
    """Publish-to-stored latency of a quiet device's readings, with or without a flood."""
    with environment(broker, server, "bench-cl-lat") as env:
        by_tenant = provision(env, {QUIET: 1, FLOOD: 1})
        simulators: list[Simulator] = []
        if flood_rate:
            backlog = int(flood_rate * (window + 10))
            Simulator(
                env.settings, weighted_devices({FLOOD: by_tenant[FLOOD]}, {}), rate=50_000,
                total=backlog, progress=False,
            ).run()  # fmt: skip
            simulators.append(
                Simulator(
                    env.with_(amqp_url=url_for(broker, env, 3)),
                    weighted_devices({FLOOD: by_tenant[FLOOD]}, {}),
                    rate=flood_rate,
                    duration=window + 5,
                    progress=False,
                )
            )
        start(env, broker, "relay", "lat-relay", 1)
        sched = start(env, broker, "scheduler", "lat-scheduler", 2)
        threads = [threading.Thread(target=s.run, daemon=True) for s in simulators]
        for thread in threads:
            thread.start()
        time.sleep(2.0)  # the flood's backlog reaches the scheduler
        published: list[float] = []
        stored_at: list[float] = []
        done = threading.Event()

        def observe() -> None:
            while not done.is_set() or len(stored_at) < len(published):
                count = int(sched.metric(STORED, tenant=QUIET))
                now = time.monotonic()
                stored_at.extend([now] * (count - len(stored_at)))
                time.sleep(0.02)

        observer = threading.Thread(target=observe, daemon=True)
        observer.start()
        device = by_tenant[QUIET][0]
        with env.channel() as ch:
            ch.confirm_delivery()  # like a device: each publish waits for its confirm
            begin = time.monotonic()
            while time.monotonic() - begin < window:
                due = begin + len(published) / QUIET_RATE
                time.sleep(max(0.0, due - time.monotonic()))
                message_id = f"q{len(published)}"
                body = orjson.dumps({"ts": time.time(), "values": {"t": 1.0}, "id": message_id})
                published.append(time.monotonic())
                ch.basic_publish(
                    topology.TELEMETRY,
                    f"{device}.env",
                    body,
                    pika.BasicProperties(delivery_mode=2, message_id=message_id),
                )
        done.set()
        observer.join(timeout=120)
        for sim in simulators:
            sim.finish()
        for thread in threads:
            thread.join(timeout=300)
    waits = [(s - p) * 1000 for p, s in zip(published, stored_at, strict=False)]
    return {
        "quiet_readings": len(published),
        "stored": len(stored_at),
        "p50_ms": r(percentile(waits, 50)),
        "p99_ms": r(percentile(waits, 99)),
        "max_ms": r(max(waits) if waits else 0.0),
    }


# -- 3. failover ------------------------------------------------------------------------
def failover(broker: Broker, server: PrivateServer, rate: float, seconds: float) -> dict[str, Any]:
    """Kill -9 the node leading the most tenant queues mid-run; pauses and reconnects."""
    cluster = broker.cluster
    assert cluster is not None
    with environment(broker, server, "bench-cl-fail") as env:
        loud = tenant_ids(3)
        by_tenant = provision(env, {**dict.fromkeys(loud, 1), QUIET: 1})
        procs = {
            "relay-1": start(env, broker, "relay", "fail-relay-1", 1),
            "relay-2": start(env, broker, "relay", "fail-relay-2", 2),
            "scheduler-1": start(env, broker, "scheduler", "fail-scheduler-1", 3),
            "scheduler-2": start(env, broker, "scheduler", "fail-scheduler-2", 1),
        }
        devices = [
            Simulator(
                env.with_(amqp_url=url_for(broker, env, 2)),
                weighted_devices({t: by_tenant[t] for t in loud}, {}),
                rate=rate, duration=seconds, progress=False,
            ),
            Simulator(
                env.with_(amqp_url=url_for(broker, env, 3)),
                weighted_devices({QUIET: by_tenant[QUIET]}, {}),
                rate=QUIET_RATE, duration=seconds, progress=False,
            ),
        ]  # fmt: skip
        devices[1].run_id += "q"
        threads = [threading.Thread(target=d.run, daemon=True) for d in devices]
        samples: list[tuple[float, dict[str, float], dict[str, float]]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                stored: dict[str, float] = {}
                connects: dict[str, float] = {}
                for name, proc in procs.items():
                    try:
                        found = proc.metrics(STORED, "fairway_amqp_connects_total")
                    except OSError:  # a scrape refused under load: the next one
                        continue
                    connects[name] = sum(found.get("fairway_amqp_connects_total", {}).values())
                    for labels, value in found.get(STORED, {}).items():
                        tenant = labels.partition('tenant="')[2].rstrip('"')
                        stored[tenant] = stored.get(tenant, 0.0) + value
                samples.append((time.monotonic(), stored, connects))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for thread in threads:
            thread.start()
        vhost = urllib.parse.quote(env.name, safe="")
        queues = management.call(broker.mgmt_url, "GET", f"queues/{vhost}?columns=name,leader")
        leaders = [
            cluster.index(q["leader"])
            for q in queues
            if q["name"].startswith(topology.TENANT_QUEUE_PREFIX)
        ]
        victim = max(set(leaders), key=leaders.count)
        time.sleep(seconds / 3)
        killed = time.monotonic()
        cluster.kill(victim)
        say(f"cluster: killed node {victim} (leading {leaders.count(victim)} tenant queues)")
        time.sleep(5.0)
        cluster.start(victim)
        for thread in threads:
            thread.join(timeout=300)
        total = sum(d.summary.sent for d in devices)
        # Counted in the database (a few full scans, after the timing): a write retried
        # after a partial failure counts its readings as duplicates, not stored.
        common.poll_until(lambda: env.stored() >= total, 300, 2.0, "every reading stored")
        assert env.stored() == total
        stop.set()
        sampler.join()
    gaps: dict[str, float] = {}
    for tenant in [*loud, QUIET]:
        last_at, last, longest = None, 0.0, 0.0
        for at, stored, _ in samples:
            value = stored.get(tenant, 0.0)
            if value > last:
                if last_at is not None and at > killed - 1:
                    longest = max(longest, at - last_at)
                last_at, last = at, value
        gaps[tenant] = r(longest, 2)
    before = next(c for at, _, c in reversed(samples) if at <= killed)
    reconnected: dict[str, Any] = {}
    for name in procs:
        again = [at for at, _, c in samples if at > killed and c.get(name, 0) > before.get(name, 0)]
        if again:  # it had a connection on the killed node
            reconnected[name] = r(again[0] - killed, 2)
    for name, device in zip(("devices", "quiet-device"), devices, strict=True):
        reconnected[name] = device.summary.reconnects
    return {
        "victim": victim,
        "tenant_queues_led": leaders.count(victim),
        "readings": total,
        "storing_gap_s": gaps,
        "max_gap_s": max(gaps.values()),
        "reconnected_after_s": reconnected,
    }


# -- 4. fairness ------------------------------------------------------------------------------
def fairness(
    broker: Broker, server: PrivateServer, window: float, per_tenant: int, schedulers: list[int]
) -> dict[str, Any]:
    """Backlogged tenants with weights 1..4; served shares over ``window`` with one
    scheduler per entry of ``schedulers`` (the node each connects to first)."""
    with environment(broker, server, "bench-cl-fair") as env:
        for tenant, weight in WEIGHTS.items():
            env.tenant(tenant, weight=weight)
        now = time.time()
        items = (
            (
                topology.TENANTS,
                t,
                tenant_message(t, Reading(f"{t}-d", "env", f"f{i}", now, {"t": 1.0}), now),
            )
            for i in range(per_tenant)
            for t in WEIGHTS
        )
        with env.channel() as ch:
            common.publish_all(ch, items)
            names = [topology.tenant_queue_name(t) for t in WEIGHTS]
            common.wait_ready(ch, names, per_tenant * len(WEIGHTS), what="fairness fill")
        procs = [
            start(env, broker, "scheduler", f"fair-scheduler-{i}", first)
            for i, first in enumerate(schedulers, 1)
        ]

        def served() -> list[dict[str, float]]:  # written per tenant: stored or found stored
            out = []
            for proc in procs:
                stored, duplicates = (
                    proc.metric_by(STORED, "tenant"),
                    proc.metric_by(DUPLICATES, "tenant"),
                )
                out.append({t: stored.get(t, 0.0) + duplicates.get(t, 0.0) for t in WEIGHTS})
            return out

        common.poll_until(lambda: sum(sum(s.values()) for s in served()) > 200, 60, 0.1, "warm-up")
        time.sleep(2.0)  # every scheduler's shares settled (re-shared every second)
        before = served()
        time.sleep(window)
        after = served()
    per_scheduler = [
        {t: a.get(t, 0.0) - b.get(t, 0.0) for t in WEIGHTS}
        for b, a in zip(before, after, strict=True)
    ]
    together = {t: sum(s[t] for s in per_scheduler) for t in WEIGHTS}
    total = sum(together.values())
    assert min(together.values()) > 0, together
    drained = min(per_tenant - together[t] for t in WEIGHTS)
    return {
        "schedulers": len(schedulers),
        "served": {t: int(v) for t, v in together.items()},
        "shares": {t: r(v / total, 3) for t, v in together.items()},
        "weighted_jain": r(jain([together[t] / w for t, w in WEIGHTS.items()]), 4),
        "per_scheduler_weighted_jain": [
            r(jain([s[t] / w for t, w in WEIGHTS.items()]), 4) if sum(s.values()) else None
            for s in per_scheduler
        ],
        "per_scheduler_served": [int(sum(s.values())) for s in per_scheduler],
        "rate": r(total / window),
        "backlog_left_min": int(drained),
    }


# -- the run ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Start the brokers and the database, run the four measurements, print the JSON."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--drain", type=int, default=None, help="readings drained (30,000 x scale)")
    p.add_argument("--window", type=float, default=None, help="s per latency/fairness window")
    args = p.parse_args(argv)
    readings = args.drain or common.scaled(30_000, args.scale, 3000)
    window = args.window or max(8.0, 20.0 * args.scale)
    postgres_url = os.environ.get("FAIRWAY_POSTGRES_URL", "")
    if not postgres_url:
        raise SystemExit("FAIRWAY_POSTGRES_URL must name the PostgreSQL under FerretDB")
    result = common.meta(NAME, args.scale, readings=readings, window_s=window)
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="fairway-bench-cluster-"))
        )
        server = stack.enter_context(private_server(postgres_url))
        say("starting a single node and a three-node cluster")
        node = stack.enter_context(LocalNode(tmp / "single"))
        cluster = stack.enter_context(LocalCluster(tmp / "cluster"))
        brokers = {
            "single": Broker(
                "single",
                lambda _first, vhost: node.amqp_url(vhost),
                node.mgmt_url,
                "classic",
                node.pids,
            ),
            "cluster": Broker(
                "cluster", cluster.amqp_url, cluster.mgmt_url, "quorum", cluster.pids, cluster
            ),
        }
        drains = {name: drain(b, server, readings) for name, b in brokers.items()}
        result["drain"] = drains
        lat: dict[str, Any] = {}
        for name, b in brokers.items():
            rate = drains[name]["drain_rate"]
            lat[name] = {
                "unloaded": latency(b, server, window, None),
                "flood": latency(b, server, window, rate),
            }
            unloaded, flood = lat[name]["unloaded"]["p99_ms"], lat[name]["flood"]["p99_ms"]
            say(f"{name}: quiet p99 {unloaded} -> {flood} ms")
        result["latency"] = lat
        result["failover"] = failover(
            brokers["cluster"], server, drains["cluster"]["drain_rate"] / 2, max(20.0, window)
        )
        say(f"cluster: longest storing pause {result['failover']['max_gap_s']} s")
        # Beyond what one window can serve even to the heaviest tenant (the scheduler alone
        # is faster than a relay and a scheduler together).
        per_tenant = int(max(2000, drains["single"]["drain_rate"] * window))
        result["fairness"] = {
            "single_one_scheduler": fairness(brokers["single"], server, window, per_tenant, [1]),
            "cluster_one_scheduler": fairness(brokers["cluster"], server, window, per_tenant, [2]),
            "cluster_two_schedulers": fairness(
                brokers["cluster"], server, window, per_tenant, [1, 3]
            ),
        }
        say(f"fairness: {[v['weighted_jain'] for v in result['fairness'].values()]}")
    single, clustered = drains["single"], drains["cluster"]
    result["ratios"] = {
        "cluster/single drain_rate": ratio(clustered["drain_rate"], single["drain_rate"]),
        "cluster/single cpu_us_per_reading": ratio(
            clustered["cpu_us_per_reading"]["total"], single["cpu_us_per_reading"]["total"]
        ),
        "cluster/single broker cpu_us_per_reading": ratio(
            clustered["cpu_us_per_reading"]["broker"], single["cpu_us_per_reading"]["broker"]
        ),
        "single quiet p99 flood/unloaded": ratio(
            lat["single"]["flood"]["p99_ms"], lat["single"]["unloaded"]["p99_ms"]
        ),
        "cluster quiet p99 flood/unloaded": ratio(
            lat["cluster"]["flood"]["p99_ms"], lat["cluster"]["unloaded"]["p99_ms"]
        ),
        "cluster/single quiet p99 under flood": ratio(
            lat["cluster"]["flood"]["p99_ms"], lat["single"]["flood"]["p99_ms"]
        ),
    }
    two = result["fairness"]["cluster_two_schedulers"]["weighted_jain"]
    gap = result["failover"]["max_gap_s"]
    result["targets"] = {
        "two_schedulers_weighted_jain>=0.95": {"value": two, "met": two >= 0.95},
        "failover_max_storing_gap_s<=10": {"value": gap, "met": gap <= 10},
    }
    common.emit(result)


if __name__ == "__main__":
    main()
