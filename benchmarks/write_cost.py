"""Write cost per reading: plain ``insert_many`` against the sink's issue-12 maintenance.

    python -m benchmarks.write_cost [--scale S] [--readings 30000] [--rounds 3]
                                    [--shapes fleet,demo]

Issue 12's target: its maintenance raises the CPU per stored reading by no more than
20 %. Each round writes the same shape of readings twice, each time into a fresh
database with Fairway's indexes (GIN included), back to back, alternating which goes
first:

``plain``: what the scheduler's sink did before issue 12 -- each batch of message
bodies through :func:`fairway.kernel.contract.to_document` and one
``insert_many(ordered=False)`` into ``telemetry``.

``maintained``: the real :class:`scheduler.sink.MongoSink` (insert with the writer id,
the in-memory rollup fold and its ``rollup_touched`` records, ``device_state`` writes
with its 2 s throttle and its flusher thread), then the fold's parts written as they
are once the hour has closed (``RollupFolder.flush_due`` with a clock past the hour's end
plus the grace), the sink closed, then the rollup task,
:func:`tasks.rollup.roll_closed_hours`, with that clock (it finds nothing to do unless
readings were late or redelivered): every device-hour's cost is amortised over its
readings, as in steady state. Last, the day's compaction into day documents
(:func:`fairway.storage.rollup_days.compact` with a clock past the day's end), reported
apart too (``compaction_us_per_reading``). It reads each device-stream-hour's hourly
documents once and inserts a day document per device-stream, so its share per reading is
about what a whole day at the same density would cost (slightly more: one day document
per 12 readings here, per 288 in a real day of the fleet shape).

Readings are relay output (``to_document`` input) in batches of the scheduler's
``batch_size`` (200), timestamped with the wall clock when generated (just before each
contender), so the sink sees open hours as it would live. Shapes (devices, 2 streams
each, every device in turn as in a steady fleet):

* ``fleet``: 10 tenants x 250 devices: with the default 30,000 readings each device gets
  12 readings in the run's hour, the density of ``benchmarks/reads.py``'s queried devices
  (each stream every 10 minutes): the most rollup work per reading;
* ``demo``: 3 tenants x 5 devices, ``fairway simulate``'s default fleet: thousands of
  readings per device-hour.

CPU per reading = database + client: a private FerretDB (the services' binary) started
here (``$FAIRWAY_SERVICES_DIR/bin/ferretdb``, default ``.services``: from a worktree,
point it at the main checkout's) on its own PostgreSQL database of the services' PostgreSQL
(``FAIRWAY_POSTGRES_URL``'s server; created with ``plan_cache_mode =
force_custom_plan`` as ``scripts/services.sh`` does, dropped at the end), so its CPU and
its PostgreSQL backends' (``pg_stat_activity`` of that database, CPU from ``/proc``) are
this benchmark's alone, whatever else the shared machine runs; the client is this
process (``time.process_time``: every thread, the sink's flusher included).

Result: per shape, every round, the medians of ``cpu_us_per_reading`` and the median of
each round's own ``maintained / plain`` ratio; ``write_cost`` and ``targets``
(``write_cost_ratio<=1.2`` per shape).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from pymongo import MongoClient
from pymongo.database import Database

from benchmarks import common
from benchmarks.common import emit, meta, parser, r, require_postgres_url, say, scaled
from fairway.kernel.contract import to_document
from fairway.kernel.settings import Settings
from fairway.storage import ferretdb, mongo, rollup_days, rollups
from fairway.storage.telemetry import HOUR, floor_hour
from scheduler.rollup_folder import RollupFolder
from scheduler.sink import MongoSink
from tasks.rollup import roll_closed_hours
from tests import harness

NAME = "write_cost"
ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STREAMS = ("env", "power")
SHAPES = {"fleet": (10, 250), "demo": (3, 5)}  # tenants, devices per tenant
TARGET_RATIO = 1.2
DEFAULTS = Settings.from_env()
BATCH = DEFAULTS.batch_size
FLUSH_GRACE_S = DEFAULTS.rollup_flush_grace_s
FLUSH_S = DEFAULTS.device_state_flush_s
GRACE_S = DEFAULTS.rollup_grace_s


# -- the private server ----------------------------------------------------------------
def _proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class PrivateServer:
    """A FerretDB of its own on a PostgreSQL database of its own; CPU of both from /proc."""

    def __init__(
        self, admin_url: str, pg_db: str, private_url: str, ferretdb_pid: int, mongo_url: str
    ) -> None:
        import psycopg

        self.pg_db, self.private_url = pg_db, private_url
        self.ferretdb_pid, self.mongo_url = ferretdb_pid, mongo_url
        # The watcher's own backend is in the admin database, not counted.
        self._watch = psycopg.connect(admin_url, autocommit=True, connect_timeout=10)
        self.vanished = 0  # backends that exited between two snapshots (their CPU is lost)

    def snapshot(self) -> dict[int, float]:
        """CPU seconds of FerretDB (key 0) and of each backend of the private database."""
        rows = self._watch.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.pg_db,)
        ).fetchall()
        found = {0: _proc_cpu_s(self.ferretdb_pid) or 0.0}
        for (pid,) in rows:
            cpu = _proc_cpu_s(int(pid))
            if cpu is not None:
                found[int(pid)] = cpu
        return found

    def since(self, before: dict[int, float]) -> float:
        """Server CPU seconds since ``before`` (backends born since count in full)."""
        now = self.snapshot()
        self.vanished += len(set(before) - set(now))
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in now.items())

    def close(self) -> None:
        self._watch.close()


@contextmanager
def private_server(
    postgres_url: str, go_env: dict[str, str] | None = None
) -> Iterator[PrivateServer]:
    import psycopg

    if not harness.ferretdb_binary().exists():
        raise SystemExit(f"{harness.ferretdb_binary()} is missing: run scripts/services.sh up")
    parts = urllib.parse.urlsplit(postgres_url)
    admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    pg_db = f"fairway_write_cost_{uuid.uuid4().hex[:8]}"
    private_url = urllib.parse.urlunsplit(parts._replace(path=f"/{pg_db}"))
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{pg_db}"')
        admin.execute(f'ALTER DATABASE "{pg_db}" SET plan_cache_mode = force_custom_plan')
    backend = ["--handler=postgresql", f"--postgresql-url={private_url}"]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="fairway-write-cost-") as tmp,
            harness.private_ferretdb(Path(tmp), backend, go_env) as (url, proc),
        ):
            server = PrivateServer(admin_url, pg_db, private_url, proc.pid, url)
            try:
                yield server
            finally:
                server.close()
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')


def use_private_ferretdb(stack: ExitStack) -> PrivateServer:
    """Point the run at a FerretDB of its own (:func:`private_server`, closed with
    ``stack``): ``common.BASE`` and, for what reads it itself (``mongo.ensure_indexes``),
    ``FAIRWAY_POSTGRES_URL``."""
    server = stack.enter_context(private_server(common.BASE.postgres_url))
    common.BASE = Settings.from_env(
        common.BASE.environ(), mongo_url=server.mongo_url, postgres_url=server.private_url
    )
    os.environ["FAIRWAY_POSTGRES_URL"] = server.private_url
    say(f"private FerretDB at {server.mongo_url} on PostgreSQL database {server.pg_db}")
    return server


# -- readings ------------------------------------------------------------------------
def bodies(shape: str, count: int, round_no: int) -> list[bytes]:
    """``count`` relay-output bodies, every device in turn, both streams, stamped now."""
    tenants, per_tenant = SHAPES[shape]
    devices = [
        (f"wc{t:02d}", f"wc{t:02d}-d{j:04d}") for t in range(tenants) for j in range(per_tenant)
    ]
    out: list[bytes] = []
    step = 0
    while len(out) < count:
        for tenant, device in devices:
            for stream in STREAMS:
                ts = time.time()
                values = (
                    {"temp": 20 + (step % 50) / 10, "hum": 40 + step % 30, "door": step % 7 == 0}
                    if stream == "env"
                    else {"watts": 100.0 + step % 400, "volts": 229.5 + (step % 10) / 10}
                )
                body = {
                    "tenant": tenant,
                    "device": device,
                    "stream": stream,
                    "id": f"r{round_no}-{stream}-{step:06d}",
                    "ts": ts,
                    "received": ts + 0.01,
                    "values": values,
                }
                out.append(orjson.dumps(body))
                if len(out) == count:
                    return out
        step += 1
    return out


def batches(items: list[bytes]) -> Iterator[list[bytes]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


# -- contenders ----------------------------------------------------------------------
def plain(db: Database, readings: list[bytes]) -> dict[str, Any]:
    collection = db[mongo.TELEMETRY]
    for batch in batches(readings):
        collection.insert_many([to_document(b) for b in batch], ordered=False)
    return {}


def maintained(db: Database, readings: list[bytes], server: PrivateServer) -> dict[str, Any]:
    """The sink and its rollup parts, then the rollup task; the task's CPU reported apart."""
    folder = RollupFolder(db, flush_grace_s=FLUSH_GRACE_S, start_thread=False)
    sink = MongoSink(db, FLUSH_S, folder)
    for batch in batches(readings):
        outcome = sink.write(batch)
        assert outcome.stored == len(batch), outcome
    # The parts are written once their hour closed plus the grace (the folder's tick).
    last_hour = floor_hour(datetime.now(UTC))
    clock = last_hour + HOUR + timedelta(seconds=max(FLUSH_GRACE_S, GRACE_S) + 1)
    folder.flush_due(clock)
    sink.close()
    server0, client0 = server.snapshot(), time.process_time()
    rolled = roll_closed_hours(db, GRACE_S, now=clock)
    task_server_s, task_client_s = server.since(server0), time.process_time() - client0
    # The day's compaction into day documents, as the task's run after the day closed.
    server0, client0 = server.snapshot(), time.process_time()
    later = rollup_days.floor_day(clock) + timedelta(days=1) + rollup_days.COMPACT_AFTER
    compacted = rollup_days.compact(db, later, max_days=10**6)
    return {
        "rollup_task_server_cpu_s": task_server_s,
        "rollup_task_client_cpu_s": task_client_s,
        "compaction_cpu_s": server.since(server0) + time.process_time() - client0,
        "rolled": rolled,
        "compacted": compacted,
    }


def run_one(
    client: MongoClient, server: PrivateServer, which: str, shape: str, count: int, round_no: int
) -> dict[str, Any]:
    db = client[f"wc-{which}-{uuid.uuid4().hex[:8]}"]
    try:
        mongo.ensure_indexes(db, server.private_url)
        tenants, _ = SHAPES[shape]
        db[mongo.TENANTS].insert_many([{"_id": f"wc{t:02d}", "weight": 1} for t in range(tenants)])
        readings = bodies(shape, count, round_no)
        server0, client0, started = server.snapshot(), time.process_time(), time.perf_counter()
        extra = plain(db, readings) if which == "plain" else maintained(db, readings, server)
        wall = time.perf_counter() - started
        server_s, client_s = server.since(server0), time.process_time() - client0
        tally = common.stored_tally(db)  # after the timing, once; readings, either layout
        stored = tally["readings"]
        assert stored == count, f"{which}: {stored} of {count} readings stored"
        assert not tally["duplicate_readings"], f"{which}: {tally}"
        found: dict[str, Any] = {
            "readings": count,
            "wall_s": r(wall, 2),
            "readings_per_s": round(count / wall),
            "server_cpu_s": r(server_s, 3),
            "client_cpu_s": r(client_s, 3),
            "cpu_us_per_reading": r((server_s + client_s) / count * 1e6),
            "server_us_per_reading": r(server_s / count * 1e6),
            "client_us_per_reading": r(client_s / count * 1e6),
        }
        if extra:
            task_s = extra["rollup_task_server_cpu_s"] + extra["rollup_task_client_cpu_s"]
            compaction_s = extra["compaction_cpu_s"]
            found["rollup_task_us_per_reading"] = r(task_s / count * 1e6)
            found["compaction_us_per_reading"] = r(compaction_s / count * 1e6)
            found["sink_us_per_reading"] = r(
                found["cpu_us_per_reading"] - (task_s + compaction_s) / count * 1e6
            )
            found["without_compaction_us_per_reading"] = r(
                found["cpu_us_per_reading"] - compaction_s / count * 1e6
            )
            found["rolled"] = extra["rolled"]
            found["compacted"] = extra["compacted"]
            found["rollups_stored"] = db[rollups.ROLLUPS].count_documents({})
            found["device_states"] = db[mongo.DEVICE_STATE].count_documents({})
        say(f"  {shape} round {round_no} {which}: {found}")
        return found
    finally:
        client.drop_database(db.name)


def run_shape(
    client: MongoClient, server: PrivateServer, shape: str, count: int, rounds: int
) -> dict[str, Any]:
    results = []
    for n in range(rounds):
        order = ("plain", "maintained") if n % 2 == 0 else ("maintained", "plain")
        found = {which: run_one(client, server, which, shape, count, n) for which in order}
        found["ratio"] = round(
            found["maintained"]["cpu_us_per_reading"] / found["plain"]["cpu_us_per_reading"], 3
        )
        found["ratio_without_compaction"] = round(
            found["maintained"]["without_compaction_us_per_reading"]
            / found["plain"]["cpu_us_per_reading"],
            3,
        )
        found["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        results.append(found)
    tenants, per_tenant = SHAPES[shape]

    def med(which: str, key: str) -> float:
        return r(statistics.median(rd[which][key] for rd in results))

    return {
        "devices": tenants * per_tenant,
        "readings_per_device_hour": round(count / (tenants * per_tenant)),
        "rounds": results,
        "plain_cpu_us_per_reading": med("plain", "cpu_us_per_reading"),
        "maintained_cpu_us_per_reading": med("maintained", "cpu_us_per_reading"),
        "maintained_sink_us_per_reading": med("maintained", "sink_us_per_reading"),
        "maintained_rollup_task_us_per_reading": med("maintained", "rollup_task_us_per_reading"),
        "maintained_compaction_us_per_reading": med("maintained", "compaction_us_per_reading"),
        "maintained_without_compaction_us_per_reading": med(
            "maintained", "without_compaction_us_per_reading"
        ),
        "ratio": round(statistics.median(rd["ratio"] for rd in results), 3),
        "ratios": [rd["ratio"] for rd in results],
        "ratio_without_compaction": round(
            statistics.median(rd["ratio_without_compaction"] for rd in results), 3
        ),
    }


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--readings", type=int, default=30_000, help="per contender and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"subset of {','.join(SHAPES)}")
    p.add_argument(
        "--gin-fastupdate",
        choices=("on", "off"),
        default=ferretdb.GIN_OPTIONS.get("fastupdate", "on"),
        help="the GIN indexes' fastupdate (pending list) setting",
    )
    args = p.parse_args()
    ferretdb.GIN_OPTIONS["fastupdate"] = args.gin_fastupdate
    count = scaled(args.readings, args.scale, minimum=BATCH)
    postgres_url = require_postgres_url("the private FerretDB's PostgreSQL")
    run_meta = meta(
        NAME,
        args.scale,
        readings=count,
        rounds=args.rounds,
        batch=BATCH,
        device_state_flush_s=FLUSH_S,
        rollup_grace_s=GRACE_S,
        backend="private FerretDB 1.24 on its own PostgreSQL database, GIN indexes",
        gin_options=dict(ferretdb.GIN_OPTIONS),
    )
    shapes: dict[str, Any] = {}
    with private_server(postgres_url) as server:
        client: MongoClient = MongoClient(server.mongo_url, tz_aware=True)
        with client:
            for shape in args.shapes.split(","):
                say(f"{shape}: {count:,} readings per contender, {args.rounds} rounds")
                shapes[shape] = run_shape(client, server, shape, count, args.rounds)
        vanished = server.vanished
    targets = {
        f"write_cost_ratio<={TARGET_RATIO:g} ({shape})": {
            "value": s["ratio"],
            "met": s["ratio"] <= TARGET_RATIO,
        }
        for shape, s in shapes.items()
    }
    emit(
        {
            "meta": {
                **run_meta,
                "pg_backends_vanished": vanished,
                "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "shapes": shapes,
            "write_cost": {
                shape: {
                    "plain_cpu_us_per_reading": s["plain_cpu_us_per_reading"],
                    "maintained_cpu_us_per_reading": s["maintained_cpu_us_per_reading"],
                    "ratio": s["ratio"],
                }
                for shape, s in shapes.items()
            },
            "targets": targets,
        }
    )


if __name__ == "__main__":
    main()
