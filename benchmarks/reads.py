"""Reads as data grows, on today's layout (one document per reading): the baseline of issue 12.

    python -m benchmarks.reads [--scale S] [--sizes 100000,1000000] [--with-5m] [--runs 30]
                               [--sqlite-runs 3] [--no-sqlite]

Readings shaped exactly like :func:`fairway.kernel.contract.to_document` output, from
1,000 devices of 10 tenants, two streams each, one reading per stream every 10 minutes
(so the stored span grows with the size: 100k readings are 8 hours, 1M are 3.5 days),
are loaded with direct ``insert_many`` into a fresh database, growing through each
size. At each size, over ``--runs`` runs each (random devices):

* ``device_page``: the device document + its newest 50 readings;
* ``history``: the history API page, ``{tenant, device, ts in the last 12 h}`` newest
  first, limit 100;
* ``month_chart``: every reading of one device in the last 30 days (today's chart);
* ``day_report``: one tenant's readings of the last day, with the report's projection.

"Now" is the newest stored reading. The database is ``FAIRWAY_BENCH_MONGO_URL``'s
server (``scripts/services.sh``'s FerretDB on PostgreSQL, with Fairway's GIN indexes
when ``FAIRWAY_POSTGRES_URL`` is set) and, at the smallest size only, a private FerretDB
on SQLite started here from the same binary, where each query is timed only
``--sqlite-runs`` times (one query takes seconds there). Server CPU per query comes from
``/proc``: the FerretDB process and PostgreSQL's postmaster with all its children.

The result: ``{"p99_ms": {query: {stored: ms}}, "growth": {query: p99 at largest /
p99 at smallest}, "targets": {name: {"value": ms, "met": bool}}}`` for the default
backend, and every figure per backend under ``"backends"``.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo import DESCENDING, MongoClient
from pymongo.database import Database

from benchmarks.common import MONGO_BASE, emit, meta, parser, percentile, r, say, unique
from fairway.devtools.processes import free_port, wait_for
from fairway.kernel.contract import to_document
from fairway.storage import mongo

NAME = "reads"
TENANTS = [f"rd{i:02d}" for i in range(10)]
DEVICES_PER_TENANT = 100
STREAMS = ("env", "power")
INTERVAL_S = 600  # per device and stream
BATCH = 1000
QUERIES = ("device_page", "history", "month_chart", "day_report")
TARGETS_MS = {"device_page": 150.0, "history": 100.0, "month_chart": 200.0}
GROWTH_TARGET = 2.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


# -- data ----------------------------------------------------------------------------
def device_ids() -> list[tuple[str, str]]:
    """(tenant, device) of the 1,000 devices."""
    return [(t, f"{t}-d{j:03d}") for t in TENANTS for j in range(DEVICES_PER_TENANT)]


def values(stream: str, n: int) -> dict[str, Any]:
    if stream == "env":
        return {"temp": 20 + (n % 50) / 10, "hum": 40 + n % 30, "door": n % 7 == 0}
    return {"watts": 100.0 + n % 400, "volts": 229.5 + (n % 10) / 10, "state": "on"}


def readings(start_step: int) -> Iterator[dict[str, Any]]:
    """Every reading from step ``start_step`` on, in time order across all devices."""
    devices = device_ids()
    step = start_step
    while True:
        ts = T0 + timedelta(seconds=step * INTERVAL_S)
        for tenant, device in devices:
            for stream in STREAMS:
                body = {
                    "tenant": tenant,
                    "device": device,
                    "stream": stream,
                    "id": f"{stream}-{step:08d}",
                    "ts": ts.timestamp(),
                    "received": ts.timestamp() + 0.2,
                    "values": values(stream, step),
                }
                yield to_document(orjson.dumps(body))
        step += 1


def per_step() -> int:
    return len(TENANTS) * DEVICES_PER_TENANT * len(STREAMS)


def load(db: Database, stored: int, size: int) -> float:
    """Insert readings ``stored`` .. ``size``; returns readings per second."""
    assert stored % per_step() == 0 and size % per_step() == 0, "sizes are multiples of 2,000"
    source = readings(stored // per_step())
    started, n = time.perf_counter(), stored
    while n < size:
        batch = [next(source) for _ in range(min(BATCH, size - n))]
        db[mongo.TELEMETRY].insert_many(batch, ordered=False)
        n += len(batch)
    return (size - stored) / (time.perf_counter() - started)


def register_devices(db: Database) -> None:
    db[mongo.DEVICES].insert_many(
        [
            {"_id": d, "tenant": t, "name": d, "enabled": True, "created": T0}
            for t, d in device_ids()
        ]
    )


# -- queries -------------------------------------------------------------------------
def queries(db: Database, now: datetime, rnd: random.Random) -> dict[str, Callable[[], int]]:
    """Each query as a function returning how many readings it read."""
    telemetry = db[mongo.TELEMETRY]
    report_view = db.get_collection(
        mongo.TELEMETRY,
        codec_options=CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_MS),
    )
    devices = device_ids()

    def device_page() -> int:
        tenant, device = rnd.choice(devices)
        assert db[mongo.DEVICES].find_one({"_id": device}) is not None
        found = telemetry.find({"tenant": tenant, "device": device}).sort("ts", DESCENDING)
        return len(list(found.limit(50)))

    def history() -> int:
        tenant, device = rnd.choice(devices)
        span = {"$gte": now - timedelta(hours=12), "$lte": now}
        found = telemetry.find({"tenant": tenant, "device": device, "ts": span}, {"tenant": 0})
        return len(list(found.sort([("ts", DESCENDING), ("_id", DESCENDING)]).limit(100)))

    def month_chart() -> int:
        tenant, device = rnd.choice(devices)
        span = {"$gte": now - timedelta(days=30), "$lte": now}
        query = {"tenant": tenant, "device": device, "ts": span}
        return len(list(telemetry.find(query, {"_id": 0, "ts": 1, "stream": 1, "values": 1})))

    def day_report() -> int:
        tenant = rnd.choice(TENANTS)
        span = {"$gte": now - timedelta(days=1), "$lt": now + timedelta(seconds=1)}
        projection = {"_id": 0, "device": 1, "stream": 1, "ts": 1, "values": 1}
        return sum(1 for _ in report_view.find({"tenant": tenant, "ts": span}, projection))

    return {
        "device_page": device_page,
        "history": history,
        "month_chart": month_chart,
        "day_report": day_report,
    }


# -- server CPU ----------------------------------------------------------------------
def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_s(pid: int, children_too: bool = False) -> float:
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children_too:  # backends that exited and were reaped
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


class ServerCpu:
    """CPU seconds of the database server: FerretDB, and PostgreSQL with every child."""

    def __init__(self, db: Database, postgres_url: str) -> None:
        status = db.client.admin.command("serverStatus")
        self.ferretdb = int(status["pid"]) if status.get("process") == "ferretdb" else None
        self.postmaster = self._postmaster(postgres_url) if postgres_url else None

    @staticmethod
    def _postmaster(postgres_url: str) -> int | None:
        import psycopg

        with psycopg.connect(postgres_url, connect_timeout=5) as connection:
            row = connection.execute("SELECT pg_backend_pid()").fetchone()
        return int(_stat(int(row[0]))[1]) if row else None  # the backend's parent

    def _children(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with suppress(OSError, IndexError):
                    if int(_stat(int(entry))[1]) == self.postmaster:
                        found.append(int(entry))
        return found

    def seconds(self) -> float | None:
        """Total CPU seconds so far (None if no server process is on this machine)."""
        if self.ferretdb is None and self.postmaster is None:
            return None
        total = _cpu_s(self.ferretdb) if self.ferretdb else 0.0
        if self.postmaster:
            total += _cpu_s(self.postmaster, children_too=True)
            total += sum(_cpu_s(pid) for pid in self._children())
        return total


# -- measuring -----------------------------------------------------------------------
def newest(db: Database) -> datetime:
    doc = db[mongo.TELEMETRY].find_one(
        {"tenant": TENANTS[0], "device": device_ids()[0][1]}, sort=[("ts", DESCENDING)]
    )
    assert doc is not None
    return doc["ts"]


def measure(db: Database, cpu: ServerCpu, runs: int, budget_s: float) -> dict[str, dict[str, Any]]:
    """p50/p99/max in ms, runs, readings returned and server CPU per query, for each query."""
    now = newest(db)
    found: dict[str, dict[str, Any]] = {}
    for name, query in queries(db, now, random.Random(12)).items():
        query()  # warm: connection, plan, caches
        times: list[float] = []
        returned = 0
        cpu0, started = cpu.seconds(), time.perf_counter()
        while len(times) < runs:
            t0 = time.perf_counter()
            returned = query()
            times.append((time.perf_counter() - t0) * 1000)
            if time.perf_counter() - started > budget_s and len(times) >= min(runs, 5):
                break
        cpu1 = cpu.seconds()
        found[name] = {
            "p50_ms": r(statistics.median(times)),
            "p99_ms": r(percentile(times, 99)),
            "max_ms": r(max(times)),
            "runs": len(times),
            "readings_returned": returned,
            "server_cpu_s": (
                None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) / len(times), 4)
            ),
        }
        say(f"  {name}: {found[name]}")
    return found


def explain_history(db: Database) -> dict[str, Any]:
    """What the server says about the history query's filter (index or scan)."""
    tenant, device = device_ids()[0]
    explained = db.command(
        "explain",
        {
            "find": mongo.TELEMETRY,
            "filter": {"tenant": tenant, "device": device},
            "sort": {"ts": -1},
            "limit": 50,
        },
    )
    plan = orjson.dumps(explained.get("queryPlanner", {}), default=str).decode()
    nodes = [
        n for n in ("Bitmap Index Scan", "Index Scan", "Seq Scan", "SCAN", "SEARCH") if n in plan
    ]
    return {
        "plan_nodes": nodes,
        **{k: explained.get(k) for k in ("filterPushdown", "sortPushdown", "limitPushdown")},
    }


def run_backend(
    db: Database, gin_url: str, cpu_url: str, sizes: list[int], runs: int, budget_s: float
) -> dict[str, Any]:
    """Load through every size and measure at each; the database is left to the caller.

    ``gin_url``: the PostgreSQL URL for Fairway's GIN indexes (empty: none); ``cpu_url``:
    the PostgreSQL whose processes count as server CPU (empty: FerretDB only).
    """
    mongo.ensure_indexes(db, gin_url)
    register_devices(db)
    cpu = ServerCpu(db, cpu_url)
    result: dict[str, Any] = {"sizes": {}}
    stored = 0
    for size in sizes:
        say(f"loading {stored:,} -> {size:,} readings")
        cpu0 = cpu.seconds()
        rate = load(db, stored, size)
        cpu1 = cpu.seconds()
        per_1k = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / (size - stored) * 1e6
        stored = size
        mongo.ensure_indexes(db, gin_url)  # ANALYZE after the load (GIN only)
        say(f"  {rate:,.0f} readings/s; measuring")
        result["sizes"][str(size)] = {
            "insert_readings_per_s": round(rate),
            "insert_server_cpu_ms_per_1k": None if per_1k is None else r(per_1k),
            "explain_history": explain_history(db),
            "queries": measure(db, cpu, runs, budget_s),
        }
    return result


# -- servers and databases -----------------------------------------------------------
@contextmanager
def fresh_db(base_url: str) -> Iterator[Database]:
    client: MongoClient = MongoClient(base_url, tz_aware=True, serverSelectionTimeoutMS=10_000)
    name = unique("bench-reads")
    try:
        yield client[name]
    finally:
        with suppress(Exception):
            client.drop_database(name)
        client.close()


@contextmanager
def sqlite_ferretdb() -> Iterator[str]:
    """A private FerretDB on SQLite (the services' binary) in a temporary directory."""
    services = Path(os.environ.get("FAIRWAY_SERVICES_DIR", ROOT / ".services"))
    binary = services / "bin" / "ferretdb"
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: run scripts/services.sh up first")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fairway-reads-sqlite-") as tmp:
        (Path(tmp) / "data").mkdir()
        with open(Path(tmp) / "ferretdb.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    str(binary),
                    "--handler=sqlite",
                    f"--sqlite-url=file:{tmp}/data/",
                    f"--state-dir={tmp}",
                    f"--listen-addr=127.0.0.1:{port}",
                    "--debug-addr=-",
                    "--telemetry=disable",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"mongodb://127.0.0.1:{port}/"
            wait_for(lambda: _pings(url) or proc.poll() is not None, 30, "FerretDB/SQLite")
            assert proc.poll() is None, "FerretDB/SQLite exited at start"
            yield url
        finally:
            proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _pings(url: str) -> bool:
    client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=500)
    with suppress(Exception), client:
        client.admin.command("ping")
        return True
    return False


def backend_of(db: Database) -> str:
    """``ferretdb-postgresql``, ``ferretdb-sqlite`` or ``mongodb``, from the server's plan."""
    info = db.client.admin.command("buildInfo")
    if "ferretdbVersion" not in info:
        return "mongodb"
    from fairway.storage import ferretdb

    return (
        "ferretdb-postgresql"
        if ferretdb.is_ferretdb_postgresql(db, mongo.TELEMETRY)
        else ("ferretdb-sqlite")
    )


# -- summary -------------------------------------------------------------------------
def summary(result: dict[str, Any]) -> dict[str, Any]:
    """p99 per query and size, growth largest/smallest, and the issue's targets."""
    sizes = list(result["sizes"])
    p99 = {q: {s: result["sizes"][s]["queries"][q]["p99_ms"] for s in sizes} for q in QUERIES}
    growth = {
        q: (round(p99[q][sizes[-1]] / p99[q][sizes[0]], 2) if len(sizes) > 1 else None)
        for q in QUERIES
    }
    targets: dict[str, dict[str, Any]] = {}
    for q, limit in TARGETS_MS.items():
        value = p99[q][sizes[-1]]
        targets[f"{q}_p99_at_{sizes[-1]}_ms<={limit:g}"] = {"value": value, "met": value <= limit}
    for q in QUERIES:
        ratio = growth[q]
        if ratio is not None:
            targets[f"{q}_growth<={GROWTH_TARGET:g}"] = {
                "value": ratio,
                "met": ratio <= GROWTH_TARGET,
            }
    return {"p99_ms": p99, "growth": growth, "targets": targets}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated reading counts")
    p.add_argument("--with-5m", action="store_true", help="also 5,000,000 (long on 2 cores)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per query and size")
    p.add_argument(
        "--budget-s",
        type=float,
        default=180.0,
        help="stop a query's runs after this long (at least 5 runs)",
    )
    p.add_argument("--sqlite-runs", type=int, default=3, help="runs per query on SQLite")
    p.add_argument("--no-sqlite", action="store_true", help="skip the SQLite backend")
    p.add_argument("--no-gin", action="store_true", help="PostgreSQL without Fairway's GIN indexes")
    args = p.parse_args()
    step = per_step()
    sizes = [int(s) for s in args.sizes.split(",")] + ([5_000_000] if args.with_5m else [])
    sizes = sorted({max(step, round(s * args.scale / step) * step) for s in sizes})
    postgres_url = os.environ.get("FAIRWAY_POSTGRES_URL", "")
    gin_url = "" if args.no_gin else postgres_url
    backends: dict[str, Any] = {}
    with fresh_db(MONGO_BASE) as db:
        db[mongo.TELEMETRY].insert_one({"_id": "probe"})  # the backend shows in a plan
        name = backend_of(db)
        db[mongo.TELEMETRY].delete_one({"_id": "probe"})
        say(f"{name} at {urllib.parse.urlsplit(MONGO_BASE).netloc}: sizes {sizes}")
        if name == "ferretdb-postgresql" and not gin_url:
            name += "-no-gin"
        backends[name] = run_backend(
            db,
            gin_url if name == "ferretdb-postgresql" else "",
            postgres_url if name.startswith("ferretdb-postgresql") else "",
            sizes,
            args.runs,
            args.budget_s,
        )
    if not args.no_sqlite:
        with sqlite_ferretdb() as url, fresh_db(url) as db:
            say(f"ferretdb-sqlite (private): size {sizes[0]:,}, {args.sqlite_runs} runs per query")
            backends["ferretdb-sqlite"] = run_backend(db, "", "", sizes[:1], args.sqlite_runs, 600)
    default = next(iter(backends))
    emit(
        {
            "meta": meta(
                NAME,
                args.scale,
                sizes=sizes,
                runs=args.runs,
                sqlite_runs=args.sqlite_runs,
                backend=default,
                layout="today: one document per reading in telemetry",
            ),
            **summary(backends[default]),
            "backends": {n: {**summary(b), **b} for n, b in backends.items()},
        }
    )


if __name__ == "__main__":
    main()
