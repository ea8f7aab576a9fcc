"""Reads as data grows: today's layout (the baseline) against the bounded read paths of issue 12.

    python -m benchmarks.reads [--scale S] [--sizes 100000,1000000] [--with-5m] [--runs 30]
                               [--sqlite-runs 3] [--no-sqlite] [--sqlite-new]

Readings shaped exactly like :func:`fairway.kernel.contract.to_document` output (with
their hour key ``hk``), from 1,000 devices of 10 tenants, two streams each, one reading
per stream every 10 minutes (so the stored span grows with the size: 100k readings are
8 hours, 1M are 3.5 days), are loaded with direct ``insert_many`` into a fresh
database, growing through each size. The loader also writes what the pipeline would
maintain from those readings: ``device_state`` (folded with
:func:`fairway.storage.device_state.fold` and written with its ``apply``) and the
hourly ``rollups`` (each closed device-hour folded with
:func:`fairway.storage.rollups.fold_hour` and inserted; the open hour is replaced again
when it grows). At each size, over ``--runs`` runs each (random devices), the same four
user-visible reads through two paths:

``baseline`` (today's queries on ``telemetry``):

* ``device_page``: the device document + its newest 50 readings;
* ``history``: the history API page, ``{tenant, device, ts in the last 12 h}`` newest
  first, limit 100;
* ``month_chart``: every reading of one device in the last 30 days;
* ``day_report``: one tenant's readings of the last day, with the report's projection.

``new`` (the storage functions the web API calls):

* ``device_page``: ``registry.device_document`` + ``device_state.get`` +
  ``telemetry.read_history`` (limit 50), as ``GET /api/devices/<d>`` and
  ``GET /api/devices/<d>/telemetry?limit=50``;
* ``history``: ``telemetry.read_history`` over the last 12 h, limit 100;
* ``month_chart``: ``rollups.hourly_series`` of one metric over 30 days, as
  ``GET /api/devices/<d>/series`` beyond a day;
* ``day_report``: one tenant's hourly rollups of the last day, by the ``tk`` key
  (no storage function reads them yet: the equality the key was made for).

"Now" is the newest stored reading. The database is ``FAIRWAY_BENCH_MONGO_URL``'s
server (``scripts/services.sh``'s FerretDB on PostgreSQL, with Fairway's GIN indexes
when ``FAIRWAY_POSTGRES_URL`` is set) and, at the smallest size only, a private FerretDB
on SQLite started here from the same binary, where each query is timed only
``--sqlite-runs`` times and only the baseline unless ``--sqlite-new`` (one query takes
seconds there, and the new paths make up to 168 of them). Server CPU per query comes
from ``/proc``: the FerretDB process and PostgreSQL's postmaster with all its children.

The result, for the default backend: ``{"p99_ms": {query: {stored: ms}}, "growth":
{query: p99 at largest / p99 at smallest}, "targets": {name: {"value", "met"}}}`` of the
new paths, ``"baseline"`` with the same figures for today's layout,
``"new_over_baseline_p99"`` per query and size; every figure per backend under
``"backends"``.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo import DESCENDING, MongoClient
from pymongo.database import Database

from benchmarks.common import MONGO_BASE, emit, meta, parser, percentile, r, ratio, say
from fairway.devtools.processes import free_port, wait_for
from fairway.kernel.contract import to_document
from fairway.storage import device_state, mongo, registry, rollups, telemetry
from fairway.storage.device_state import DeviceDelta

NAME = "reads"
TENANTS = [f"rd{i:02d}" for i in range(10)]
DEVICES_PER_TENANT = 100
STREAMS = ("env", "power")
INTERVAL_S = 600  # per device and stream
BATCH = 1000
QUERIES = ("device_page", "history", "month_chart", "day_report")
LAYOUTS = ("baseline", "new")
CHART_METRIC = "temp"
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


class Derived:
    """What the pipeline maintains from the readings: ``device_state`` and hourly rollups.

    Readings come in time order across all devices, so once a batch reaches hour H
    every device-hour before H is closed: it is folded and inserted, and its readings
    dropped. Open hours are written at :meth:`flush` (replaced on the next flush).
    """

    def __init__(self) -> None:
        self.deltas: dict[str, DeviceDelta] = {}
        self.hours: dict[tuple[str, str, datetime], list[dict[str, Any]]] = {}
        self.provisional: set[tuple[str, str, datetime]] = set()  # open hours written once
        self.rollups_written = 0
        self.seconds = 0.0  # spent writing rollups and device_state

    def add(self, db: Database, docs: list[dict[str, Any]]) -> None:
        """Fold a batch of stored readings in; write the hours it closed."""
        for device, delta in device_state.fold(docs).items():
            known = self.deltas.get(device)
            if known is None:
                self.deltas[device] = delta
            else:
                known.merge(delta)
        for doc in docs:
            key = (doc["tenant"], doc["device"], telemetry.floor_hour(doc["ts"]))
            self.hours.setdefault(key, []).append(doc)
        newest = telemetry.floor_hour(docs[-1]["ts"])
        self._write_hours(db, [k for k in self.hours if k[2] < newest], closed=True)

    def flush(self, db: Database) -> None:
        """Write the open hours and the device states folded so far."""
        self._write_hours(db, list(self.hours), closed=False)
        started = time.perf_counter()
        device_state.apply(db, self.deltas)
        self.deltas = {}  # the stored state is their fold; the next ones fold onto it
        self.seconds += time.perf_counter() - started

    def _write_hours(
        self, db: Database, keys: list[tuple[str, str, datetime]], closed: bool
    ) -> None:
        if not keys:
            return
        started = time.perf_counter()
        fresh: dict[str, list[dict[str, Any]]] = {rollups.ROLLUPS: [], rollups.ROLLUP_MINUTES: []}
        for key in keys:
            pairs = rollups.hour_documents(*key, rollups.fold_readings(self.hours[key]))
            for hourly, minutes in pairs:
                for name, doc in ((rollups.ROLLUPS, hourly), (rollups.ROLLUP_MINUTES, minutes)):
                    if key in self.provisional:  # written while open: replaced, as compute_hour
                        db[name].replace_one({"_id": doc["_id"]}, doc, upsert=True)
                    else:
                        fresh[name].append(doc)
            if closed:
                del self.hours[key]
                self.provisional.discard(key)
            else:
                self.provisional.add(key)
        for name, docs in fresh.items():
            for start in range(0, len(docs), BATCH):
                db[name].insert_many(docs[start : start + BATCH], ordered=False)
        fresh_hours = fresh[rollups.ROLLUPS]
        self.rollups_written += len(fresh_hours)
        self.seconds += time.perf_counter() - started


def load(db: Database, stored: int, size: int, derived: Derived) -> float:
    """Insert readings ``stored`` .. ``size`` and what derives from them; readings per second
    of the telemetry inserts alone (``derived.seconds`` holds the rest)."""
    assert stored % per_step() == 0 and size % per_step() == 0, "sizes are multiples of 2,000"
    source = readings(stored // per_step())
    spent, n = 0.0, stored
    while n < size:
        batch = [next(source) for _ in range(min(BATCH, size - n))]
        started = time.perf_counter()
        db[mongo.TELEMETRY].insert_many(batch, ordered=False)
        spent += time.perf_counter() - started
        derived.add(db, batch)
        n += len(batch)
    derived.flush(db)
    return (size - stored) / spent


def register_devices(db: Database) -> None:
    db[mongo.DEVICES].insert_many(
        [
            {"_id": d, "tenant": t, "name": d, "enabled": True, "created": T0}
            for t, d in device_ids()
        ]
    )


# -- queries -------------------------------------------------------------------------
def baseline_queries(
    db: Database, now: datetime, rnd: random.Random
) -> dict[str, Callable[[], int]]:
    """Today's queries, each a function returning how many readings it read."""
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


def new_queries(db: Database, now: datetime, rnd: random.Random) -> dict[str, Callable[[], int]]:
    """The same reads through the web API's storage functions; each returns how many
    documents (readings, chart points, rollups) the user gets."""
    devices = device_ids()

    def device_page() -> int:
        tenant, device = rnd.choice(devices)
        assert registry.device_document(db, device) is not None
        assert device_state.get(db, device) is not None
        page = telemetry.read_history(db, telemetry.HistoryQuery(tenant, device, limit=50))
        return len(page.docs)

    def history() -> int:
        tenant, device = rnd.choice(devices)
        query = telemetry.HistoryQuery(
            tenant, device, limit=100, start=now - timedelta(hours=12), end=now
        )
        return len(telemetry.read_history(db, query).docs)

    def month_chart() -> int:
        tenant, device = rnd.choice(devices)
        start = now - timedelta(days=30)
        return len(rollups.hourly_series(db, tenant, device, CHART_METRIC, start, now, now=now))

    def day_report() -> int:
        return len(day_rollups(db, rnd.choice(TENANTS), now - timedelta(days=1), now))

    return {
        "device_page": device_page,
        "history": history,
        "month_chart": month_chart,
        "day_report": day_report,
    }


def day_rollups(db: Database, tenant: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """A tenant's hourly rollups overlapping ``start``..``end``, read UTC day by day by ``tk``."""
    found: list[dict[str, Any]] = []
    day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    while day <= end:
        found += db[rollups.ROLLUPS].find({"tk": rollups.tenant_day_key(tenant, day)})
        day += timedelta(days=1)
    return [r for r in found if start <= r["hour"] + rollups.HOUR and r["hour"] <= end]


QUERY_SETS = {"baseline": baseline_queries, "new": new_queries}


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


def measure(
    db: Database, cpu: ServerCpu, layout: str, runs: int, budget_s: float
) -> dict[str, dict[str, Any]]:
    """p50/p99/max in ms, runs, documents returned and server CPU per query of ``layout``."""
    now = newest(db)
    found: dict[str, dict[str, Any]] = {}
    for name, query in QUERY_SETS[layout](db, now, random.Random(12)).items():
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
            "returned": returned,
            "server_cpu_s": (
                None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) / len(times), 4)
            ),
        }
        say(f"  {layout} {name}: {found[name]}")
    return found


def explain(db: Database, collection: str, filt: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What the server says about a find's filter (index or scan)."""
    explained = db.command("explain", {"find": collection, "filter": filt, **extra})
    plan = orjson.dumps(explained.get("queryPlanner", {}), default=str).decode()
    nodes = [
        n for n in ("Bitmap Index Scan", "Index Scan", "Seq Scan", "SCAN", "SEARCH") if n in plan
    ]
    return {
        "plan_nodes": nodes,
        **{k: explained.get(k) for k in ("filterPushdown", "sortPushdown", "limitPushdown")},
    }


def explains(db: Database) -> dict[str, dict[str, Any]]:
    """The plans of the baseline's history query and of the new paths' equality reads."""
    tenant, device = device_ids()[0]
    now = newest(db)
    return {
        "baseline_history": explain(
            db, mongo.TELEMETRY, {"tenant": tenant, "device": device}, sort={"ts": -1}, limit=50
        ),
        "new_history_hour": explain(
            db, mongo.TELEMETRY, {"hk": telemetry.hour_key(tenant, device, now)}
        ),
        "new_chart_day": explain(db, rollups.ROLLUPS, {"dk": rollups.day_key(tenant, device, now)}),
        "new_report_day": explain(db, rollups.ROLLUPS, {"tk": rollups.tenant_day_key(tenant, now)}),
    }


def run_backend(
    db: Database,
    gin_url: str,
    cpu_url: str,
    sizes: list[int],
    runs: int,
    budget_s: float,
    layouts: tuple[str, ...] = LAYOUTS,
) -> dict[str, Any]:
    """Load through every size and measure ``layouts`` at each; the database is left to
    the caller.

    ``gin_url``: the PostgreSQL URL for Fairway's GIN indexes (empty: none); ``cpu_url``:
    the PostgreSQL whose processes count as server CPU (empty: FerretDB only).
    """
    mongo.ensure_indexes(db, gin_url)
    register_devices(db)
    cpu = ServerCpu(db, cpu_url)
    derived = Derived()
    result: dict[str, Any] = {"layouts": list(layouts), "sizes": {}}
    stored = 0
    for size in sizes:
        say(f"loading {stored:,} -> {size:,} readings (+ device_state and rollups)")
        cpu0, derived_s0, started = cpu.seconds(), derived.seconds, time.perf_counter()
        rate = load(db, stored, size, derived)
        wall = time.perf_counter() - started
        cpu1 = cpu.seconds()
        per_1k = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / (size - stored) * 1e6
        stored = size
        mongo.ensure_indexes(db, gin_url)  # ANALYZE after the load (GIN only)
        say(f"  {rate:,.0f} readings/s, {wall:.0f} s in all; measuring")
        at_size: dict[str, Any] = {
            "insert_readings_per_s": round(rate),
            "load_wall_s": round(wall, 1),
            "derived_write_s": round(derived.seconds - derived_s0, 1),
            "rollups_stored": db[rollups.ROLLUPS].estimated_document_count(),
            "load_server_cpu_ms_per_1k": None if per_1k is None else r(per_1k),
            "explain": explains(db),
        }
        for layout in layouts:
            at_size[layout] = measure(db, cpu, layout, runs, budget_s)
        if set(LAYOUTS) <= set(layouts):
            at_size["new_over_baseline_p99"] = {
                q: ratio(at_size["new"][q]["p99_ms"], at_size["baseline"][q]["p99_ms"])
                for q in QUERIES
            }
        result["sizes"][str(size)] = at_size
    return result


# -- servers and databases -----------------------------------------------------------
@contextmanager
def fresh_db(base_url: str) -> Iterator[Database]:
    client: MongoClient = MongoClient(base_url, tz_aware=True, serverSelectionTimeoutMS=10_000)
    name = f"bench-reads-{uuid.uuid4().hex[:10]}"
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
def layout_summary(result: dict[str, Any], layout: str) -> dict[str, Any]:
    """p99 per query and size, and growth largest/smallest, of one layout."""
    sizes = list(result["sizes"])
    p99 = {q: {s: result["sizes"][s][layout][q]["p99_ms"] for s in sizes} for q in QUERIES}
    growth = {
        q: (ratio(p99[q][sizes[-1]], p99[q][sizes[0]]) if len(sizes) > 1 else None) for q in QUERIES
    }
    return {"p99_ms": p99, "growth": growth}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets on the new paths (the first measured layout if not), next to
    the baseline's figures and the new/baseline p99 ratios."""
    sizes, layouts = list(result["sizes"]), result["layouts"]
    judged = "new" if "new" in layouts else layouts[0]
    mine = layout_summary(result, judged)
    targets: dict[str, dict[str, Any]] = {}
    for q, limit in TARGETS_MS.items():
        value = mine["p99_ms"][q][sizes[-1]]
        targets[f"{q}_p99_at_{sizes[-1]}_ms<={limit:g}"] = {"value": value, "met": value <= limit}
    for q in QUERIES:
        growth = mine["growth"][q]
        if growth is not None:
            targets[f"{q}_growth<={GROWTH_TARGET:g}"] = {
                "value": growth,
                "met": growth <= GROWTH_TARGET,
            }
    out: dict[str, Any] = {"judged_layout": judged, **mine, "targets": targets}
    if judged == "new" and "baseline" in layouts:
        out["baseline"] = layout_summary(result, "baseline")
        out["new_over_baseline_p99"] = {
            q: {s: result["sizes"][s]["new_over_baseline_p99"][q] for s in sizes} for q in QUERIES
        }
    return out


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
    p.add_argument(
        "--sqlite-new", action="store_true", help="also the new paths on SQLite (very long)"
    )
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
            layouts = LAYOUTS if args.sqlite_new else ("baseline",)
            backends["ferretdb-sqlite"] = run_backend(
                db, "", "", sizes[:1], args.sqlite_runs, 600, layouts
            )
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
                layouts={
                    "baseline": "today's queries on telemetry (one document per reading)",
                    "new": "device_state, history by hk, hourly rollups by dk/tk",
                },
            ),
            **summary(backends[default]),
            "backends": {n: {**summary(b), **b} for n, b in backends.items()},
        }
    )


if __name__ == "__main__":
    main()
