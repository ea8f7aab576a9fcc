"""FerretDB's CPU per stored reading under Go's default collector and under services.sh's.

    python -m benchmarks.ferretdb_gc [--scale S] [--readings 20000] [--rounds 3]

Two private FerretDBs (the services' binary, ``$FAIRWAY_SERVICES_DIR/bin/ferretdb``), each
on a PostgreSQL database of its own of the services' PostgreSQL
(:func:`benchmarks.write_cost.private_server`), identical but for the Go runtime's
settings: ``default`` (``GOGC=100``, no memory limit: Go's defaults) and ``tuned``
(:data:`tests.harness.FERRETDB_GO_ENV`, what ``scripts/services.sh`` starts FerretDB with).
Each round writes the same readings through the real :class:`scheduler.sink.MongoSink`
(telemetry insert, rollup fold and ``rollup_touched``, ``device_state``) into a fresh
database of each, alternating which goes first, after one untimed batch. The readings
have end_to_end's shape: 10 tenants x 5 devices, bundles of 10 readings of one tenant,
write batches of 250 readings (the scheduler's mean batch under its write budget).

CPU per stored reading from ``/proc``: FerretDB's process, and its database's PostgreSQL
backends; the client (this process) apart. FerretDB's peak resident memory (``VmHWM``),
since the collector trades memory for CPU: after the first round's writes, and at the
end, after each round's check of what was stored (the readings' ids, which FerretDB
answers by reading the whole collection: a scan's memory, not the writes').

Targets: tuned / default FerretDB CPU per reading <= 0.85; tuned / default peak RSS
<= 2.0 (Go's heap goal is live x 5 at ``GOGC=400`` against live x 2 at 100: at most 2.5).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from contextlib import ExitStack
from typing import Any

import orjson
from pymongo import MongoClient

from benchmarks import common
from benchmarks.common import emit, meta, parser, r, require_postgres_url, say, scaled
from benchmarks.write_cost import PrivateServer, private_server
from fairway.kernel.contract import BATCH_KEY
from fairway.storage import mongo
from scheduler.rollup_folder import RollupFolder
from scheduler.sink import MongoSink
from tests import harness

NAME = "ferretdb_gc"
TENANTS = [f"gc{t:02d}" for t in range(10)]
DEVICES_PER_TENANT = 5
PER_BUNDLE = 10
BATCH_READINGS = 250
WARM_READINGS = len(TENANTS) * PER_BUNDLE  # one bundle of each tenant
CONTENDERS: dict[str, dict[str, str]] = {
    "default": {"GOGC": "100", "GOMEMLIMIT": "off"},
    "tuned": harness.FERRETDB_GO_ENV,
}
TARGET_CPU_RATIO = 0.85
TARGET_RSS_RATIO = 2.0


def bodies(count: int, round_no: int) -> list[bytes]:
    """Bundles of ``PER_BUNDLE`` readings of one tenant, tenants in turn, stamped now."""
    out: list[bytes] = []
    seq = 0
    while len(out) * PER_BUNDLE < count:
        for tenant in TENANTS:
            parts = []
            for _ in range(PER_BUNDLE):
                now = time.time()
                parts.append(
                    {
                        "device": f"{tenant}-d{seq % DEVICES_PER_TENANT}",
                        "stream": "default",
                        "id": f"r{round_no}-m{seq}",
                        "ts": now,
                        "received": now + 0.002,
                        "values": {"temp": 20 + (seq % 500) / 100, "ok": seq % 7 != 0},
                    }
                )
                seq += 1
            out.append(orjson.dumps({"tenant": tenant, BATCH_KEY: parts}))
    return out


def peak_rss_mb(pid: int) -> float:
    """``VmHWM`` of ``pid`` in MB."""
    return harness.proc_status(pid).get("VmHWM", 0) / 1024


def run_one(
    server: PrivateServer, data: list[bytes], count: int, write_rss: dict[str, float], name: str
) -> dict[str, Any]:
    """Write ``data`` through the sink into a fresh database of ``server``."""
    client: MongoClient = MongoClient(server.mongo_url, tz_aware=True)
    db = client[f"gc-{uuid.uuid4().hex[:8]}"]
    try:
        mongo.ensure_indexes(db, server.private_url)
        sink = MongoSink(db, 2.0, RollupFolder(db, start_thread=False))
        per_batch = BATCH_READINGS // PER_BUNDLE
        # One batch first, untimed: the collections' first writes and FerretDB's prepared
        # statements are not what a reading costs in steady state.
        assert sink.write(bodies(WARM_READINGS, -1)).stored == WARM_READINGS
        before, client0, started = server.snapshot(), time.process_time(), time.perf_counter()
        stored = 0
        for start in range(0, len(data), per_batch):
            stored += sink.write(data[start : start + per_batch]).stored
        sink.close()
        wall = time.perf_counter() - started
        after, client_s = server.snapshot(), time.process_time() - client0
        write_rss.setdefault(name, r(peak_rss_mb(server.ferretdb_pid)))
        ferret_s = after[0] - before[0]
        backends_s = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid != 0)
        # After the timing; readings, in either layout (a device batch's are one document).
        found = common.stored_tally(db)["readings"] - WARM_READINGS
        assert stored == count == found, f"{stored} stored, {found} found, {count} written"
        return {
            "readings_per_s": round(count / wall),
            "ferretdb_us_per_reading": r(ferret_s / count * 1e6),
            "postgres_us_per_reading": r(backends_s / count * 1e6),
            "server_us_per_reading": r((ferret_s + backends_s) / count * 1e6),
            "client_us_per_reading": r(client_s / count * 1e6),
        }
    finally:
        client.drop_database(db.name)
        client.close()


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--readings", type=int, default=20_000, help="per contender and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    count = scaled(args.readings, args.scale, minimum=BATCH_READINGS)
    count -= count % (len(TENANTS) * PER_BUNDLE)
    postgres_url = require_postgres_url("the private FerretDBs' PostgreSQL")
    run_meta = meta(
        NAME,
        args.scale,
        readings=count,
        rounds=args.rounds,
        contenders=CONTENDERS,
        batch_readings=BATCH_READINGS,
        readings_per_bundle=PER_BUNDLE,
    )
    rounds: list[dict[str, Any]] = []
    write_rss: dict[str, float] = {}  # peak RSS after the first round's writes
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(private_server(postgres_url, env))
            for name, env in CONTENDERS.items()
        }
        for n in range(args.rounds):
            data = bodies(count, n)
            order = list(CONTENDERS) if n % 2 == 0 else list(reversed(CONTENDERS))
            found: dict[str, Any] = {
                name: run_one(servers[name], data, count, write_rss, name) for name in order
            }
            found["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            say(f"round {n}: {found}")
            rounds.append(found)
        rss = {name: r(peak_rss_mb(s.ferretdb_pid)) for name, s in servers.items()}

    def med(name: str, key: str) -> float:
        return r(statistics.median(rd[name][key] for rd in rounds))

    keys = (
        "ferretdb_us_per_reading",
        "postgres_us_per_reading",
        "server_us_per_reading",
        "client_us_per_reading",
        "readings_per_s",
    )
    medians = {name: {k: med(name, k) for k in keys} for name in CONTENDERS}
    ratio = round(
        medians["tuned"]["ferretdb_us_per_reading"] / medians["default"]["ferretdb_us_per_reading"],
        3,
    )
    rss_ratio = round(rss["tuned"] / rss["default"], 3)
    emit(
        {
            "meta": {**run_meta, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "rounds": rounds,
            "medians": medians,
            "ferretdb_peak_rss_mb": rss,
            "ferretdb_peak_rss_mb_after_first_writes": write_rss,
            "ratios": {
                "ferretdb_cpu_tuned/default": ratio,
                "ferretdb_peak_rss_tuned/default": rss_ratio,
            },
            "targets": {
                f"ferretdb_cpu_tuned/default<={TARGET_CPU_RATIO}": {
                    "value": ratio,
                    "met": ratio <= TARGET_CPU_RATIO,
                },
                f"ferretdb_peak_rss_tuned/default<={TARGET_RSS_RATIO}": {
                    "value": rss_ratio,
                    "met": rss_ratio <= TARGET_RSS_RATIO,
                },
            },
        }
    )


if __name__ == "__main__":
    main()
