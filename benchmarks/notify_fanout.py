"""notify_fanout: live notifications through the real push gateway.

    python -m benchmarks.notify_fanout [--scale S]

At scale 1: 100 users (viewers of their own tenant, each following device ``d0``),
10 concurrent SSE sessions per user = 1,000 sessions on one ``fairway gateway``.

1. **Sessions**: open all of them (50 at a time); time from connect to the ``ready``
   event (queue declared, bound, consumed).
2. **Latency**: publish telemetry events to ``events`` at a steady rate, each for one
   random user's device ``d0`` (so 10 sessions get it); every delivery's latency is
   receive time minus the publish time carried in the body. Publisher and clients
   share this process and one clock.
3. **Subscription changes**, side by side in rounds (alternating order):
   ``e2e``: one ``exchange.bind``/``exchange.unbind`` of ``telemetry.<t>.d1`` on
   ``user.<id>`` per change, whatever the number of sessions (what
   :func:`fairway.domain.notify.sync_user` does); ``per_queue``: the same change made by
   binding every one of the user's 10 session queues straight to ``events``
   (10 ``queue.bind``/``queue.unbind``). The per-queue contender binds 10 look-alike
   queues per user declared on its own connection (session queues are exclusive to
   the gateway's connection, which is itself a reason the per-queue design needs the
   gateway to do the rebinding). After the e2e rounds a bound change is checked to
   reach all 10 sessions of the user.

Targets: p99 <= 50 ms with 1,000 sessions; e2e changes >= 5x the per-queue rate.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pika

from benchmarks import common
from benchmarks.common import r, say
from fairway.amqp.connection import blocking_channel
from fairway.devtools.processes import free_port
from fairway.domain import notify, pushtoken
from fairway.kernel import topology

NAME = "notify_fanout"
SESSIONS_PER_USER = 10
OPEN_CONCURRENCY = 50
SECRET = "notify-fanout-benchmark-secret-key"
DURABLE_PREFIX = "bench-durable-user."
CONTENDERS = ("e2e", "per_queue", "e2e_durable")


# -- SSE clients -------------------------------------------------------------------------
class Client:
    """One SSE session over asyncio streams (HTTP/1.0: no chunked encoding)."""

    def __init__(self, port: int, user: str, token: str, sink: Sink) -> None:
        self.port, self.user, self.token, self.sink = port, user, token, sink
        self.queue = ""
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> float:
        """Connect and wait for ``ready``; return the seconds it took."""
        t0 = time.perf_counter()
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"GET /events?token={self.token} HTTP/1.0\r\n\r\n".encode())
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"{self.user}: {status!r}")
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        name, data = await _event(reader)
        assert name == b"ready", name
        self.queue = orjson.loads(data)["session"]
        elapsed = time.perf_counter() - t0
        self.task = asyncio.create_task(self._read(reader))
        return elapsed

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            name, data = await _event(reader)
            if name is None:
                return
            self.sink.record(self, orjson.loads(data))

    def close(self) -> None:
        """Hang up."""
        if self.task:
            self.task.cancel()
        if self.writer:
            self.writer.close()


async def _event(reader: asyncio.StreamReader) -> tuple[bytes | None, bytes]:
    name, data = b"message", b""
    while True:
        line = await reader.readline()
        if not line:
            return None, b""
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                return name, data
            continue
        if line.startswith(b"event: "):
            name = line[7:]
        elif line.startswith(b"data: "):
            data = line[6:]


class Sink:
    """Latencies of telemetry deliveries, and who got which marker."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.by_device: dict[str, int] = defaultdict(int)
        self.got = asyncio.Event()

    def record(self, client: Client, event: dict[str, Any]) -> None:
        """One delivery."""
        if "sent" in event:
            self.latencies_ms.append((time.time() - event["sent"]) * 1000)
        self.by_device[f"{client.user}:{event.get('device')}"] += 1


# -- the phases ---------------------------------------------------------------------------
def users_of(n: int) -> list[tuple[str, str]]:
    """(user id, tenant) pairs."""
    return [(f"u{i:03d}", f"t{i:03d}") for i in range(n)]


def create_users(ch: Any, users: list[tuple[str, str]]) -> None:
    """Viewers following ``d0``: ``user.<id>`` with its bindings."""
    for user, tenant in users:
        notify.sync_user(ch, user, set(), notify.binding_keys("viewer", tenant, user, ["d0"]))


async def open_sessions(port: int, users: list[tuple[str, str]], sink: Sink) -> tuple:
    """SESSIONS_PER_USER sessions per user, OPEN_CONCURRENCY at a time."""
    clients = [
        Client(port, u, pushtoken.issue(SECRET, u, t), sink)
        for u, t in users
        for _ in range(SESSIONS_PER_USER)
    ]
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one(c: Client) -> float:
        async with gate:
            return await c.open()

    t0 = time.perf_counter()
    times = await asyncio.gather(*(one(c) for c in clients))
    return clients, list(times), time.perf_counter() - t0


def publish_steady(settings: Any, users: list[tuple[str, str]], rate: float, n: int) -> float:
    """Publish ``n`` telemetry events for random users' ``d0`` at ``rate``/s; return seconds."""
    props = pika.BasicProperties(content_type="application/json")
    rng = random.Random(7)
    with blocking_channel(settings, "bench-notify-publisher") as ch:
        t0 = time.perf_counter()
        for i in range(n):
            due = t0 + i / rate
            while (delay := due - time.perf_counter()) > 0:
                time.sleep(delay)  # paces the publishes: the rate is the workload
            _user, tenant = rng.choice(users)
            body = {"kind": "telemetry", "tenant": tenant, "device": "d0", "seq": i}
            body["sent"] = time.time()
            ch.basic_publish(topology.EVENTS, f"telemetry.{tenant}.d0", orjson.dumps(body), props)
        return time.perf_counter() - t0


def change_rate_e2e(
    ch: Any, users: list[tuple[str, str]], changes: int, prefix: str = notify.USER_EXCHANGE_PREFIX
) -> float:
    """Changes per second as one exchange bind/unbind on ``<prefix><id>`` each."""
    t0 = time.perf_counter()
    for i in range(changes):
        user, tenant = users[(i // 2) % len(users)]
        key = f"telemetry.{tenant}.d1"
        if i % 2 == 0:
            ch.exchange_bind(destination=prefix + user, source=topology.EVENTS, routing_key=key)
        else:
            ch.exchange_unbind(destination=prefix + user, source=topology.EVENTS, routing_key=key)
    return changes / (time.perf_counter() - t0)


def durable_user_exchanges(ch: Any, users: list[tuple[str, str]]) -> str:
    """Durable look-alikes of ``user.<id>`` (the design this replaced, diagnostic); prefix."""
    for user, _tenant in users:
        ch.exchange_declare(DURABLE_PREFIX + user, "fanout", durable=True, auto_delete=False)
    return DURABLE_PREFIX


def change_rate_per_queue(
    ch: Any, users: list[tuple[str, str]], queues: dict[str, list[str]], changes: int
) -> float:
    """Changes per second when every session queue is (un)bound straight to ``events``."""
    t0 = time.perf_counter()
    for i in range(changes):
        user, tenant = users[(i // 2) % len(users)]
        key = f"telemetry.{tenant}.d1"
        for q in queues[user]:
            if i % 2 == 0:
                ch.queue_bind(queue=q, exchange=topology.EVENTS, routing_key=key)
            else:
                ch.queue_unbind(queue=q, exchange=topology.EVENTS, routing_key=key)
    return changes / (time.perf_counter() - t0)


def look_alike_queues(ch: Any, settings: Any, users: list[tuple[str, str]]) -> dict[str, list[str]]:
    """SESSIONS_PER_USER session-like queues per user on this connection, bound nowhere."""
    out: dict[str, list[str]] = {}
    for user, _tenant in users:
        specs = [notify.session_queue(settings, user) for _ in range(SESSIONS_PER_USER)]
        for spec in specs:
            ch.queue_declare(**spec.declare_kwargs())
        out[user] = [s.name for s in specs]
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: Any) -> dict[str, Any]:
    """All phases against one gateway; the result JSON."""
    n_users = common.scaled(100, args.scale, 2)
    users = users_of(n_users)
    sessions = n_users * SESSIONS_PER_USER
    events = common.scaled(args.events, args.scale, 100)
    changes = common.scaled(args.changes, args.scale, 20) // 2 * 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * sessions + 256)), hard))

    with common.bench_env("bench-notify") as env:
        settings = env.with_(
            secret_key=SECRET, gateway_port=free_port(), gateway_max_sessions=max(2000, sessions)
        )
        with env.channel() as ch:
            create_users(ch, users)
        with common.fairway_process(["gateway"], settings, f"{NAME}-gateway") as gw:
            gw.wait_ready()
            common.poll_until(lambda: gw.metric("fairway_gateway_amqp_up") == 1, 30)
            rss_idle = gw.status()
            sink = Sink()
            clients, open_times, open_s = await open_sessions(settings.gateway_port, users, sink)
            say(f"{len(clients)} sessions open in {open_s:.1f} s")
            rss_open = gw.status()
            load_before = os.getloadavg()

            # -- latency -------------------------------------------------------------
            expected = events * SESSIONS_PER_USER
            cpu0, client0 = cpu_seconds(gw.pid), cpu_seconds(os.getpid())
            publish_s = await asyncio.to_thread(publish_steady, settings, users, args.rate, events)
            deadline = time.monotonic() + 60
            while len(sink.latencies_ms) < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            lat = sorted(sink.latencies_ms)
            gateway_cpu = cpu_seconds(gw.pid) - cpu0
            client_cpu = cpu_seconds(os.getpid()) - client0
            say(
                f"latency over {len(lat)} deliveries: p50 {common.percentile(lat, 50):.1f} ms, "
                f"p99 {common.percentile(lat, 99):.1f} ms"
            )
            rss_loaded = gw.status()

            # -- subscription changes -------------------------------------------------
            rounds = []
            with env.channel() as ch:
                queues = look_alike_queues(ch, settings, users)
                durable = durable_user_exchanges(ch, users)
                for i in range(args.rounds):
                    order = CONTENDERS if i % 2 == 0 else CONTENDERS[::-1]
                    rd: dict[str, Any] = {}
                    for contender in order:
                        if contender == "e2e":
                            rate = await asyncio.to_thread(change_rate_e2e, ch, users, changes)
                        elif contender == "e2e_durable":
                            rate = await asyncio.to_thread(
                                change_rate_e2e, ch, users, changes, durable
                            )
                        else:
                            rate = await asyncio.to_thread(
                                change_rate_per_queue, ch, users, queues, changes
                            )
                        rd[contender] = {"rate": r(rate)}
                    rounds.append(rd)
                    say(
                        f"round {i}: e2e {rd['e2e']['rate']}/s, "
                        f"per-queue {rd['per_queue']['rate']}/s, "
                        f"e2e durable {rd['e2e_durable']['rate']}/s"
                    )
                # Check: a change made the e2e way reaches every session of the user.
                user, tenant = users[0]
                notify.sync_user(
                    ch,
                    user,
                    {f"telemetry.{tenant}.d0"},
                    {f"telemetry.{tenant}.d0", f"telemetry.{tenant}.d1"},
                )
                ch.basic_publish(
                    topology.EVENTS,
                    f"telemetry.{tenant}.d1",
                    orjson.dumps({"kind": "telemetry", "tenant": tenant, "device": "d1"}),
                )
            key = f"{user}:d1"
            deadline = time.monotonic() + 30
            while sink.by_device[key] < SESSIONS_PER_USER and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            check_sessions = sink.by_device[key]
            slow = gw.metric("fairway_gateway_slow_disconnects_total")
            delivered = gw.metric("fairway_gateway_delivered_total")
            for c in clients:
                c.close()
            load_after = os.getloadavg()

    p50, p99 = common.percentile(lat, 50), common.percentile(lat, 99)
    e2e_rate = statistics.median(rd["e2e"]["rate"] for rd in rounds)
    pq_rate = statistics.median(rd["per_queue"]["rate"] for rd in rounds)
    speedup = common.median_ratio(rounds, "e2e", "per_queue")
    return common.meta(
        NAME,
        args.scale,
        workload={
            "users": n_users,
            "sessions": sessions,
            "sessions_per_user": SESSIONS_PER_USER,
            "events": events,
            "event_rate_per_s": args.rate,
            "deliveries_per_s": args.rate * SESSIONS_PER_USER,
            "changes_per_round": changes,
            "rounds": args.rounds,
            "gateway_prefetch": settings.gateway_prefetch,
            "loadavg_during": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        sessions={
            "opened": len(clients),
            "open_seconds": r(open_s, 2),
            "open_p50_ms": r(common.percentile(open_times, 50) * 1000),
            "open_p99_ms": r(common.percentile(open_times, 99) * 1000),
        },
        latency={
            "deliveries": len(lat),
            "expected": expected,
            "publish_seconds": r(publish_s, 2),
            "p50_ms": r(p50, 2),
            "p90_ms": r(common.percentile(lat, 90), 2),
            "p99_ms": r(p99, 2),
            "max_ms": r(lat[-1] if lat else float("nan"), 2),
            "client_and_publisher_cpu_seconds": r(client_cpu, 2),
        },
        gateway={
            "delivered_total": delivered,
            "slow_disconnects": slow,
            "rss_idle_mb": r(rss_idle.get("VmRSS", 0) / 1024),
            "rss_sessions_open_mb": r(rss_open.get("VmRSS", 0) / 1024),
            "rss_after_latency_mb": r(rss_loaded.get("VmRSS", 0) / 1024),
            "cpu_seconds_latency_phase": r(gateway_cpu, 2),
            "cpu_us_per_delivery": r(gateway_cpu / max(len(lat), 1) * 1e6),
        },
        subscription_changes={
            "rounds": rounds,
            "e2e_rate_per_s": r(e2e_rate),
            "per_queue_rate_per_s": r(pq_rate),
            "e2e_durable_rate_per_s": r(
                statistics.median(rd["e2e_durable"]["rate"] for rd in rounds)
            ),
            "check_e2e_change_reached_sessions": check_sessions,
        },
        ratios={
            "e2e/per_queue": speedup,
            "e2e_durable/per_queue": common.median_ratio(rounds, "e2e_durable", "per_queue"),
            "e2e/e2e_durable": common.median_ratio(rounds, "e2e", "e2e_durable"),
        },
        targets={
            f"p99 <= 50 ms with {sessions} sessions": {"value": r(p99, 2), "met": p99 <= 50},
            "e2e subscription changes >= 5x per-queue rebinding": {
                "value": speedup,
                "met": bool(speedup and speedup >= 5),
            },
            "every delivery arrived": {
                "value": f"{len(lat)}/{expected}",
                "met": len(lat) == expected,
            },
        },
    )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0, help="events per second (x10 deliveries)")
    p.add_argument(
        "--events", type=int, default=4000, help="events in the latency phase at scale 1"
    )
    p.add_argument("--changes", type=int, default=1000, help="changes per contender per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    common.emit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
