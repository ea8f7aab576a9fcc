"""Relay throughput: drain a pre-filled ``ingest`` into the tenant queues.

``ingest`` is pre-filled with N valid readings (100,000 at scale 1.0) from 100
registered devices of 10 tenants; then, in one run, refilled between contenders:

* ``fairway_relay``: one ``python -m fairway relay`` (asynchronous pika, streamed
  publisher confirms, ack after confirm, registry cache, rate limiter).
* ``sync_confirm``: a minimal relay on ``BlockingConnection`` with
  ``confirm_delivery()``: every republish waits for its confirm (one round trip
  per message), then the delivery is acked. The pattern the design forbids.
* ``unconfirmed``: the same minimal relay without confirms (ack right after the
  publish, unsafe: a broker crash loses messages). An upper bound for pika.

Both minimal relays do the same validation and republish as the real one:
:func:`fairway.kernel.contract.parse_reading`, a device -> tenant lookup (in a dict loaded
once), :func:`fairway.kernel.contract.tenant_message`, publish to ``tenants``; prefetch is
the relay's (``relay_prefetch``). All contenders are timed from outside the same
way: from the first message leaving ``ingest`` (its ready count drops) to the tenant
queues holding all N (passive ``queue.declare`` polls, interpolated).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import orjson
import pika

from benchmarks import common
from benchmarks.common import r, say
from fairway.kernel import topology
from fairway.kernel.contract import parse_reading, tenant_message
from fairway.kernel.reasons import Rejection
from fairway.kernel.settings import Settings
from fairway.provision import provision_tenant
from fairway.storage import mongo, registry
from tests.harness import Pipeline

NAME = "relay"
TENANTS = [f"rl{i:02d}" for i in range(10)]
DEVICES_PER_TENANT = 10


def device_ids() -> list[str]:
    """``rl00-d00`` ..., 10 per tenant."""
    return [f"{t}-d{j:02d}" for t in TENANTS for j in range(DEVICES_PER_TENANT)]


def provision(env: Pipeline) -> None:
    """Tenants, their queues, and the registered devices."""
    for tenant in TENANTS:
        provision_tenant(env.settings, tenant, 1, env.settings.tenant_max_backlog)
    for device in device_ids():
        registry.register_device(env.db, device.split("-")[0], device)


def fill_ingest(env: Pipeline, count: int, run: int) -> float:
    """Publish ``count`` valid readings to ``telemetry``; return seconds."""
    started = time.perf_counter()
    devices = device_ids()
    now = time.time()
    items = (
        (
            topology.TELEMETRY,
            f"{devices[i % len(devices)]}.env",
            orjson.dumps({"ts": now, "id": f"r{run}-{i}", "values": {"temp": 21.5, "ok": True}}),
        )
        for i in range(count)
    )
    with env.channel() as ch:
        common.publish_all(ch, items)
        common.wait_ready(ch, [topology.INGEST], count, what="ingest fill")
    return time.perf_counter() - started


def purge_tenant_queues(env: Pipeline) -> None:
    """Empty the tenant queues between contenders."""
    with env.channel() as ch:
        for tenant in TENANTS:
            ch.queue_purge(topology.tenant_queue_name(tenant))


def measure(env: Pipeline, count: int, alive: Any, timeout: float) -> dict[str, float]:
    """Time ingest -> tenant queues from outside; ``alive()`` says the contender runs."""
    names = [topology.tenant_queue_name(t) for t in TENANTS]
    with env.channel() as ch:
        started = time.time()
        while True:
            ready = ch.queue_declare(topology.INGEST, passive=True).method.message_count
            first = time.time()
            if ready < count:
                break
            if not alive():
                raise RuntimeError("contender exited before consuming")
            if first - started > timeout:
                raise TimeoutError("contender never consumed")
            time.sleep(0.001)
        prev_t, prev_n = first, 0
        while True:
            time.sleep(0.02)
            n = sum(common.queue_counts(ch, names).values())
            now = time.time()
            if n >= count:
                last = prev_t + (now - prev_t) * (count - prev_n) / max(n - prev_n, 1)
                break
            if now - first > timeout:
                raise TimeoutError(f"{n} of {count} relayed after {timeout} s")
            if not alive():
                raise RuntimeError(f"contender exited with {n} of {count} relayed")
            prev_t, prev_n = now, n
        rejected = ch.queue_declare(topology.REJECTED, passive=True).method.message_count
    return {"first": first, "last": last, "startup_s": first - started, "rejected": rejected}


def run_fairway(env: Pipeline, count: int, timeout: float) -> dict[str, Any]:
    """One ``python -m fairway relay``."""
    with common.fairway_process(["relay"], env.settings, f"{NAME}-fairway_relay") as proc:
        t = measure(env, count, proc.alive, timeout)
        status = proc.status()
    return _result(count, t, rss_mb=r(status.get("VmHWM", 0) / 1024))


def run_minimal(env: Pipeline, mode: str, count: int, timeout: float) -> dict[str, Any]:
    """A minimal relay (``sync_confirm`` or ``unconfirmed``) in a child process."""
    child = common.python_module(
        "benchmarks.relay",
        [
            "--minimal-relay",
            mode,
            "--amqp-url",
            env.settings.amqp_url,
            "--mongo-url",
            env.settings.mongo_url,
            "--count",
            str(count),
        ],
        f"{NAME}-{mode}",
    )
    try:
        t = measure(env, count, lambda: child.poll() is None, timeout)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    extra = json.loads(out) if out.strip() else {}
    return _result(count, t, **extra)


def _result(count: int, t: dict[str, float], **extra: Any) -> dict[str, Any]:
    seconds = t["last"] - t["first"]
    return {
        "messages": count,
        "seconds": r(seconds, 3),
        "rate": r(count / seconds),
        "startup_s": r(t["startup_s"], 3),
        "rejected": t["rejected"],
        **extra,
    }


# -- the minimal relays (child processes) ------------------------------------------------
def minimal_relay(mode: str, amqp_url: str, mongo_url: str, count: int) -> dict[str, Any]:
    """Validate + republish ``count`` messages, one blocking publish at a time."""
    settings = Settings.from_env(amqp_url=amqp_url, mongo_url=mongo_url)
    tenant_of = {d.id: d.tenant for d in registry.list_devices(mongo.connect(settings))}
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = connection.channel()
    if mode == "sync_confirm":
        ch.confirm_delivery()
    ch.basic_qos(prefetch_count=settings.relay_prefetch)
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    state = {"done": 0, "refused": 0}

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        now = time.time()
        try:
            reading = parse_reading(
                method.routing_key,
                body,
                settings,
                message_id=properties.message_id,
                user_id=properties.user_id,
                now=now,
            )
            tenant = tenant_of[reading.device]
        except (Rejection, KeyError):
            state["refused"] += 1
        else:
            # With confirm_delivery() this blocks until the broker confirms.
            channel.basic_publish(
                topology.TENANTS, tenant, tenant_message(tenant, reading, now), props
            )
        channel.basic_ack(method.delivery_tag)
        state["done"] += 1
        if state["done"] >= count:
            channel.stop_consuming()

    ch.basic_consume(topology.INGEST, on_message)
    ch.start_consuming()
    connection.close()
    return {"refused_by_minimal_relay": state["refused"]}


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the benchmark (or be a minimal relay)."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=None, help="default 100,000 x scale")
    p.add_argument(
        "--sync-messages",
        type=int,
        default=None,
        help="messages for the slow sync_confirm contender (default: messages / 5)",
    )
    p.add_argument("--rounds", type=int, default=3, help="repeat all contenders (order flips)")
    p.add_argument("--contenders", default="fairway_relay,sync_confirm,unconfirmed")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--minimal-relay", choices=["sync_confirm", "unconfirmed"], help="internal")
    p.add_argument("--amqp-url", help="internal")
    p.add_argument("--mongo-url", help="internal")
    p.add_argument("--count", type=int, help="internal")
    args = p.parse_args(argv)

    if args.minimal_relay:
        out = minimal_relay(args.minimal_relay, args.amqp_url, args.mongo_url, args.count)
        print(json.dumps(out))
        return

    n = args.messages or common.scaled(100_000, args.scale, 1000)
    n_sync = args.sync_messages or max(1000, n // 5)
    contenders = args.contenders.split(",")
    rounds: list[dict[str, Any]] = []
    with common.bench_env("bench-relay") as env:
        started = time.perf_counter()
        provision(env)
        say(
            f"provisioned {len(TENANTS)} tenants, {len(device_ids())} devices "
            f"in {time.perf_counter() - started:.1f} s"
        )
        run = 0
        for i in range(args.rounds):
            order = contenders if i % 2 == 0 else contenders[::-1]
            results: dict[str, Any] = {}
            for contender in order:
                run += 1
                count = n_sync if contender == "sync_confirm" else n
                purge_tenant_queues(env)
                fill_s = fill_ingest(env, count, run)
                if contender == "fairway_relay":
                    res = run_fairway(env, count, args.timeout)
                else:
                    res = run_minimal(env, contender, count, args.timeout)
                res["fill_seconds"] = r(fill_s, 2)
                say(f"round {i + 1} {contender}: {res['rate']:.0f} msg/s ({count} messages)")
                results[contender] = res
            rounds.append(results)
    rates = {c: statistics.median(rd[c]["rate"] for rd in rounds) for c in contenders}
    relay_rate = rates.get("fairway_relay", 0.0)
    result = common.meta(
        NAME,
        args.scale,
        workload={
            "messages": n,
            "sync_confirm_messages": n_sync,
            "tenants": len(TENANTS),
            "devices": len(device_ids()),
            "relay_prefetch": Settings().relay_prefetch,
        },
        rounds=rounds,
        rate_msg_s={c: r(v) for c, v in rates.items()},
        ratios={
            f"fairway_relay/{c}": common.median_ratio(rounds, "fairway_relay", c)
            for c in contenders
            if c != "fairway_relay"
        },
        ratios_per_round={
            f"fairway_relay/{c}": common.paired_ratios(rounds, "fairway_relay", c)
            for c in contenders
            if c != "fairway_relay"
        },
        ratio_note="ratios: median over rounds of each round's ratio (rate_msg_s: medians)",
        targets={
            "fairway_relay >= 20000 msg/s per process": {
                "value": r(relay_rate),
                "met": relay_rate >= 20_000,
            }
        },
    )
    common.emit(result)


if __name__ == "__main__":
    sys.exit(main())
