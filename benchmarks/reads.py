"""Reads as data grows: today's layout (the baseline) against the bounded read paths of issue 12.

    python -m benchmarks.reads [--scale S] [--sizes 100000,1000000] [--with-5m] [--runs 30]
                               [--span-days 31] [--keep] [--reuse SIZE=DB,...]
                               [--layouts baseline,new] [--progress FILE]
                               [--sqlite-runs 3] [--no-sqlite] [--sqlite-new]

Every size is the same 31 days of device time (``--span-days``), loaded into its own
fresh database, from 1,000 devices of 10 tenants, two streams each:

* the 10 *hot* devices (the first of each tenant), which every query reads, report each
  stream every 10 minutes at every size (89,280 readings): a month chart returns ~720
  hourly points, a day chart 144 minute points, a history page 100 readings, at every
  size, so the growth ratios compare the same amount returned;
* the other 990 devices share the rest, evenly spaced in time: their density is what
  grows with the size (about 5 readings per stream at 100k, 500 at 1M, 2,500 at 5M).

(With all 1,000 devices equally dense a month chart could not return 720 points below
1.44M readings: 100k readings are 50 per stream.) Readings are shaped exactly like
:func:`fairway.kernel.contract.to_document` output (with their hour key ``hk``) and
loaded with direct ``insert_many``, in time order. When the baseline is measured they
are loaded in the shape stored before lean documents (also ``tenant``, ``device`` and
``msg_id``, :func:`old_shape`): the baseline's queries filter on ``tenant`` and
``device``, which lean readings lack (they would read nothing). The new paths then read
those documents too, as in every figure recorded before lean documents; with
``--layouts new`` the readings are lean. The result says which (``document_shape``).
The loader also writes what the pipeline would maintain: ``device_state``
(:func:`fairway.storage.device_state.fold`, written with its ``apply``) and the rollups
of every closed device-hour
(:func:`fairway.storage.rollups.fold_readings` and ``hour_documents``, as
``compute_hour``: the slim hourly document in ``rollups``, the minute columns in
``rollup_minutes``). The last, open hour has no rollup, as in the pipeline: charts fold
it from the raw readings. The span starts mid-month, so a 30-day chart reads two month
keys. At each size, over ``--runs`` runs each (random hot devices), the same five
user-visible reads through two paths, side by side:

``baseline`` (today's queries on ``telemetry``, one document per reading):

* ``device_page``: the device document + its newest 50 readings;
* ``history``: the history API page, ``{tenant, device, ts in the last 12 h}`` newest
  first, limit 100;
* ``month_chart`` / ``day_chart``: every reading of one device in the last 30 days / 24 h;
* ``day_report``: one tenant's readings of the last day, with the report's projection.

``new`` (the storage functions the web API calls):

* ``device_page``: ``registry.device_document`` + ``device_state.get`` +
  ``telemetry.read_history`` (limit 50), as ``GET /api/devices/<d>`` and
  ``GET /api/devices/<d>/telemetry?limit=50``;
* ``history``: ``telemetry.read_history`` over the last 12 h, limit 100;
* ``month_chart``: ``rollups.hourly_series`` of one metric over 30 days, as
  ``GET /api/devices/<d>/series`` beyond 2 days (hourly rollups by ``mk``);
* ``day_chart``: ``rollups.minute_series`` of one metric over 24 h, as ``series`` from
  3 h to 2 days (minute rollups by ``dk``);
* ``day_report``: one tenant's hourly rollups of the last day, by the ``tk`` key
  (no storage function reads them yet: the equality the key was made for). Unlike the
  others it returns more as the fleet gets denser (a tenant's day holds every device),
  so its ``growth_per_returned`` is given beside its growth.

"Now" is the hot devices' last reading (``device_state.last_ts``, as the API's charts).
The database is ``FAIRWAY_BENCH_MONGO_URL``'s server (``scripts/services.sh``'s FerretDB
on PostgreSQL, with Fairway's GIN indexes when ``FAIRWAY_POSTGRES_URL`` is set) in a
database of its own per size (``bench-reads-<random>``, dropped after unless
``--keep``; ``--reuse`` measures a kept one again without loading), and, at the
smallest size only, a private FerretDB on SQLite started here from the same binary,
where each query is timed only ``--sqlite-runs`` times and only the baseline unless
``--sqlite-new``. A query whose warm-up took more than ``--slow-s`` is timed only
``--slow-runs`` times. Server CPU per query comes from ``/proc``: the FerretDB process and
PostgreSQL's postmaster with all its children (on a shared server, other clients' work
counts too); client CPU is this process's.

The result, for the default backend: ``{"p99_ms": {query: {stored: ms}}, "growth":
{query: p99 at largest / p99 at smallest}, "targets": {name: {"value", "met"}}}`` of the
new paths (with ``p50_ms``, ``returned``, ``growth_per_returned``), ``"baseline"`` with
the same figures for today's layout, ``"new_over_baseline_p99"`` per query and size;
every figure per backend under ``"backends"``.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import statistics
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo import DESCENDING, MongoClient
from pymongo.database import Database

from benchmarks.common import MONGO_BASE, emit, meta, parser, percentile, r, ratio, say
from fairway.kernel.contract import split_reading_id, to_document
from fairway.storage import device_state, ferretdb, mongo, registry, rollup_days, rollups, telemetry
from fairway.storage.device_state import DeviceDelta
from tests import harness

NAME = "reads"
TENANTS = [f"rd{i:02d}" for i in range(10)]
DEVICES_PER_TENANT = 100
STREAMS = ("env", "power")
HOT_INTERVAL_S = 600  # the queried devices: each stream every 10 minutes, at every size
SPAN_DAYS = 31  # device time every size is spread over
BATCH = 1000
QUERIES = ("device_page", "history", "month_chart", "day_chart", "day_report")
LAYOUTS = ("baseline", "new")
CHART_METRIC = "temp"
TARGETS_MS = {"device_page": 150.0, "history": 100.0, "month_chart": 200.0}
GROWTH_TARGET = 2.0
# Mid-month, so a 30-day chart reads two month keys (``mk``), as most do.
T0 = datetime(2026, 1, 16, tzinfo=UTC)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


# -- data ----------------------------------------------------------------------------
def device_ids() -> list[tuple[str, str]]:
    """(tenant, device) of the 1,000 devices."""
    return [(t, f"{t}-d{j:03d}") for t in TENANTS for j in range(DEVICES_PER_TENANT)]


def hot_devices() -> list[tuple[str, str]]:
    """The devices every query reads: the first of each tenant (same data at every size)."""
    return [(t, f"{t}-d000") for t in TENANTS]


def fleet_devices() -> list[tuple[str, str]]:
    """Every other device: what grows with the size."""
    hot = set(hot_devices())
    return [d for d in device_ids() if d not in hot]


def hot_steps(span_days: float) -> int:
    return int(span_days * 86400 // HOT_INTERVAL_S)


def hot_count(span_days: float) -> int:
    """Readings of the hot devices (the same at every size)."""
    return len(hot_devices()) * len(STREAMS) * hot_steps(span_days)


def values(stream: str, n: int) -> dict[str, Any]:
    if stream == "env":
        return {"temp": 20 + (n % 50) / 10, "hum": 40 + n % 30, "door": n % 7 == 0}
    return {"watts": 100.0 + n % 400, "volts": 229.5 + (n % 10) / 10, "state": "on"}


def _body(tenant: str, device: str, stream: str, msg_id: str, ts: float, n: int) -> bytes:
    return orjson.dumps(
        {
            "tenant": tenant,
            "device": device,
            "stream": stream,
            "id": msg_id,
            "ts": ts,
            "received": ts + 0.2,
            "values": values(stream, n),
        }
    )


def _hot(span_days: float) -> Iterator[tuple[float, bytes]]:
    t0 = T0.timestamp()
    for step in range(hot_steps(span_days)):
        ts = t0 + step * HOT_INTERVAL_S
        for tenant, device in hot_devices():
            for stream in STREAMS:
                yield ts, _body(tenant, device, stream, f"h{stream}-{step:08d}", ts, step)


def _fleet(count: int, span_days: float) -> Iterator[tuple[float, bytes]]:
    """``count`` readings evenly spaced over the span, round robin over the fleet's streams."""
    pairs = [(t, d, s) for t, d in fleet_devices() for s in STREAMS]
    t0, spacing = T0.timestamp(), span_days * 86400 / max(count, 1)
    for k in range(count):
        tenant, device, stream = pairs[k % len(pairs)]
        ts = round(t0 + k * spacing, 3)
        yield ts, _body(tenant, device, stream, f"f{stream}-{k:09d}", ts, k // len(pairs))


def old_shape(doc: dict[str, Any]) -> dict[str, Any]:
    """A lean stored reading in the shape stored before lean documents (key for key and
    in order): ``tenant``, ``device`` and ``msg_id`` as fields too, the baseline's filter."""
    tenant, device, message_id = split_reading_id(doc["_id"])
    return {
        "_id": doc["_id"],
        "hk": doc["hk"],
        "tenant": tenant,
        "device": device,
        "stream": doc["stream"],
        "msg_id": message_id,
        "ts": doc["ts"],
        "received": doc["received"],
        "values": doc["values"],
    }


def readings(size: int, span_days: float, old: bool = False) -> Iterator[dict[str, Any]]:
    """``size`` readings over ``span_days`` from ``T0``, in time order across all devices:
    the hot devices' fixed schedule and the fleet's share, whose density grows with size.
    Lean, or in the shape before lean documents if ``old``."""
    fleet = size - hot_count(span_days)
    assert fleet >= 0, f"{size:,} readings: the hot devices alone take {hot_count(span_days):,}"
    merged = heapq.merge(_hot(span_days), _fleet(fleet, span_days), key=lambda p: p[0])
    for _, body in merged:
        yield old_shape(to_document(body)) if old else to_document(body)


class Derived:
    """What the pipeline maintains from the readings: ``device_state`` and rollups.

    Readings come in time order across all devices, so once a batch reaches hour H
    every device-hour before H is closed: it is folded (:func:`rollups.fold_readings`,
    :func:`rollups.hour_documents`, as ``compute_hour``) and its two documents inserted.
    The last, open hour gets no rollup, as in the pipeline (an hour is rolled up only
    after it closed plus the grace): charts fold it from the raw readings.
    """

    def __init__(self) -> None:
        self.deltas: dict[str, DeviceDelta] = {}
        self.hours: dict[tuple[str, str, datetime], list[dict[str, Any]]] = {}
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
            tenant, device, _ = split_reading_id(doc["_id"])
            key = (tenant, device, telemetry.floor_hour(doc["ts"]))
            self.hours.setdefault(key, []).append(doc)
        newest = telemetry.floor_hour(docs[-1]["ts"])
        self._write_hours(db, [k for k in self.hours if k[2] < newest])

    def flush(self, db: Database) -> None:
        """Write the device states (the open hour stays without rollups)."""
        started = time.perf_counter()
        device_state.apply(db, self.deltas)
        self.deltas = {}
        self.seconds += time.perf_counter() - started

    def _write_hours(self, db: Database, keys: list[tuple[str, str, datetime]]) -> None:
        if not keys:
            return
        started = time.perf_counter()
        fresh: dict[str, list[dict[str, Any]]] = {rollups.ROLLUPS: [], rollups.ROLLUP_MINUTES: []}
        for key in keys:
            for hourly, minutes in rollups.hour_documents(
                *key, rollups.fold_readings(self.hours.pop(key))
            ):
                fresh[rollups.ROLLUPS].append(hourly)
                fresh[rollups.ROLLUP_MINUTES].append(minutes)
        for name, docs in fresh.items():
            for start in range(0, len(docs), BATCH):
                db[name].insert_many(docs[start : start + BATCH], ordered=False)
        self.rollups_written += len(fresh[rollups.ROLLUPS])
        self.seconds += time.perf_counter() - started


def load(db: Database, size: int, span_days: float, derived: Derived, old: bool = False) -> float:
    """Insert ``size`` readings (in the old shape if ``old``) and what derives from them
    into an empty database; readings per second of the telemetry inserts alone
    (``derived.seconds`` holds the rest)."""
    source = readings(size, span_days, old)
    spent, n = 0.0, 0
    while n < size:
        batch = [next(source) for _ in range(min(BATCH, size - n))]
        started = time.perf_counter()
        db[mongo.TELEMETRY].insert_many(batch, ordered=False)
        spent += time.perf_counter() - started
        derived.add(db, batch)
        n += len(batch)
    derived.flush(db)
    return size / spent


def register_devices(db: Database) -> None:
    db[mongo.TENANTS].insert_many([{"_id": t, "weight": 1} for t in TENANTS])
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
    devices = hot_devices()

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

    def chart(span: timedelta) -> Callable[[], int]:
        def read() -> int:
            tenant, device = rnd.choice(devices)
            query = {"tenant": tenant, "device": device, "ts": {"$gte": now - span, "$lte": now}}
            projection = {"_id": 0, "ts": 1, "stream": 1, "values": 1}
            return len(list(telemetry.find(query, projection)))

        return read

    def day_report() -> int:
        tenant = rnd.choice(TENANTS)
        span = {"$gte": now - timedelta(days=1), "$lt": now + timedelta(seconds=1)}
        projection = {"_id": 0, "device": 1, "stream": 1, "ts": 1, "values": 1}
        return sum(1 for _ in report_view.find({"tenant": tenant, "ts": span}, projection))

    return {
        "device_page": device_page,
        "history": history,
        "month_chart": chart(timedelta(days=30)),
        "day_chart": chart(timedelta(days=1)),
        "day_report": day_report,
    }


def new_queries(db: Database, now: datetime, rnd: random.Random) -> dict[str, Callable[[], int]]:
    """The same reads through the web API's storage functions; each returns how many
    documents (readings, chart points, rollups) the user gets."""
    devices = hot_devices()

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

    def month_chart() -> int:  # GET .../series beyond 2 days: hourly rollups
        tenant, device = rnd.choice(devices)
        start = now - timedelta(days=30)
        return len(rollups.hourly_series(db, tenant, device, CHART_METRIC, start, now, now=now))

    def day_chart() -> int:  # GET .../series from 3 h to 2 days: minute rollups
        tenant, device = rnd.choice(devices)
        start = now - timedelta(days=1)
        return len(rollups.minute_series(db, tenant, device, CHART_METRIC, start, now, now=now))

    def day_report() -> int:
        return len(day_rollups(db, rnd.choice(TENANTS), now - timedelta(days=1), now))

    return {
        "device_page": device_page,
        "history": history,
        "month_chart": month_chart,
        "day_chart": day_chart,
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


def month_only(db: Database, now: datetime, rnd: random.Random) -> dict[str, Callable[[], int]]:
    """The new month chart alone (measured before the day documents are compacted)."""
    return {"month_chart": new_queries(db, now, rnd)["month_chart"]}


QUERY_SETS = {"baseline": baseline_queries, "new": new_queries, "month_only": month_only}


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


class PrivateCpu:
    """CPU seconds of a private server (:func:`benchmarks.write_cost.private_server`): its
    FerretDB and its own PostgreSQL database's backends, nobody else's."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.seen: dict[int, float] = {}  # last seen per process: exited ones keep theirs

    def seconds(self) -> float:
        self.seen.update(self.server.snapshot())
        return sum(self.seen.values())


# -- measuring -----------------------------------------------------------------------
def newest(db: Database) -> datetime:
    """ "Now": the hot devices' last reading, from ``device_state`` (as the API's charts)."""
    state = device_state.get(db, hot_devices()[0][1])
    assert state is not None
    return state["last_ts"]


def measure(
    db: Database,
    cpu: ServerCpu,
    layout: str,
    runs: int,
    budget_s: float,
    slow_s: float,
    slow_runs: int,
) -> dict[str, dict[str, Any]]:
    """p50/p99/max in ms, runs, documents returned, server and client CPU per query of
    ``layout``. A query whose warm-up run took more than ``slow_s`` is timed only
    ``slow_runs`` times (the baseline's reports at millions of readings)."""
    now = newest(db)
    found: dict[str, dict[str, Any]] = {}
    for name, query in QUERY_SETS[layout](db, now, random.Random(12)).items():
        t0 = time.perf_counter()
        query()  # warm: connection, plan, caches
        warm_s = time.perf_counter() - t0
        wanted = slow_runs if warm_s > slow_s else runs
        times: list[float] = []
        returned: list[int] = []
        cpu0, client0, started = cpu.seconds(), time.process_time(), time.perf_counter()
        while len(times) < wanted:
            t0 = time.perf_counter()
            returned.append(query())
            times.append((time.perf_counter() - t0) * 1000)
            if time.perf_counter() - started > budget_s and len(times) >= min(wanted, 5):
                break
        cpu1, client1 = cpu.seconds(), time.process_time()
        found[name] = {
            "p50_ms": r(statistics.median(times)),
            "p99_ms": r(percentile(times, 99)),
            "max_ms": r(max(times)),
            "runs": len(times),
            "returned": round(statistics.mean(returned)),
            "server_cpu_s": (
                None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) / len(times), 4)
            ),
            "client_cpu_s": round((client1 - client0) / len(times), 4),
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
    tenant, device = hot_devices()[0]
    now = newest(db)
    return {
        "baseline_history": explain(
            db, mongo.TELEMETRY, {"tenant": tenant, "device": device}, sort={"ts": -1}, limit=50
        ),
        "new_history_hour": explain(
            db, mongo.TELEMETRY, {"hk": telemetry.hour_key(tenant, device, now)}
        ),
        "new_month_chart": explain(
            db, rollups.ROLLUPS, {"mk": rollups.month_key(tenant, device, now)}
        ),
        "new_day_chart": explain(
            db, rollups.ROLLUP_MINUTES, {"dk": rollups.day_key(tenant, device, now)}
        ),
        "new_report_day": explain(db, rollups.ROLLUPS, {"tk": rollups.tenant_day_key(tenant, now)}),
        "new_month_chart_days": explain(
            db, mongo.ROLLUP_DAYS, {"mk": rollups.month_key(tenant, device, now)}
        ),
    }


def gin_pending_pages(postgres_url: str, schema: str) -> int | None:
    """Pages in the GIN indexes' pending lists (``pgstattuple``; None if unavailable)."""
    import psycopg

    with suppress(psycopg.Error), psycopg.connect(postgres_url, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        row = c.execute(
            "SELECT sum((pgstatginindex(format('%%I.%%I', schemaname, indexname)::regclass))"
            ".pending_pages)"
            " FROM pg_indexes WHERE schemaname = %s AND indexdef LIKE '%%USING gin%%'",
            (schema,),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else None
    return None


def vacuum(postgres_url: str, schema: str) -> None:
    """``VACUUM (ANALYZE)`` every table of the database, as autovacuum eventually does:
    it also moves the GIN indexes' pending lists into the indexes."""
    import psycopg

    from fairway.storage.ferretdb import backing_tables, quote

    with psycopg.connect(postgres_url, autocommit=True) as c:
        for table in backing_tables(c, schema).values():
            c.execute(f"VACUUM (ANALYZE) {quote(schema)}.{quote(table)}")


def document_shape(db: Database) -> str:
    """``old`` if a hot device's reading has ``tenant`` and ``device`` fields (the shape
    before lean documents), else ``lean``."""
    tenant, device = hot_devices()[0]
    found = db[mongo.TELEMETRY].find_one({"hk": telemetry.hour_key(tenant, device, T0)})
    assert found is not None, f"{db.name}: no reading of {device} in its first hour"
    return "old" if "tenant" in found and "device" in found else "lean"


def measure_size(
    db: Database,
    gin_url: str,
    cpu_url: str,
    size: int,
    opts: argparse.Namespace,
    layouts: tuple[str, ...],
    load_it: bool = True,
) -> dict[str, Any]:
    """Load ``size`` readings into the empty ``db`` (unless not ``load_it``: a database
    a ``--keep`` run left) and measure ``layouts`` on it.

    ``gin_url``: the PostgreSQL URL for Fairway's GIN indexes (empty: none); ``cpu_url``:
    the PostgreSQL whose processes count as server CPU (empty: FerretDB only).
    """
    server = getattr(opts, "private_server", None)
    cpu = PrivateCpu(server) if server is not None else ServerCpu(db, cpu_url)
    rate = wall = derived_s = 0.0
    per_1k: float | None = None
    if load_it:
        mongo.ensure_indexes(db, gin_url)
        register_devices(db)
        derived = Derived()
        say(f"loading {size:,} readings over {opts.span_days:g} days (+ device_state, rollups)")
        cpu0, started = cpu.seconds(), time.perf_counter()
        rate = load(db, size, opts.span_days, derived, old="baseline" in layouts)
        wall, derived_s = time.perf_counter() - started, derived.seconds
        cpu1 = cpu.seconds()
        per_1k = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / size * 1e6
        mongo.ensure_indexes(db, gin_url)  # ANALYZE after the load (GIN only)
        say(f"  {rate:,.0f} readings/s, {wall:.0f} s in all")
    compaction: dict[str, Any] = {}
    if load_it and "new" in layouts:
        # The month chart on the hourly documents, then the rollup task's compaction of
        # every closed day into day documents (the new paths below read those).
        say("month chart before the day documents")
        compaction["month_chart_hourly_docs"] = measure(
            db, cpu, "month_only", opts.runs, opts.budget_s, opts.slow_s, opts.slow_runs
        )["month_chart"]
        cpu0, started = cpu.seconds(), time.perf_counter()
        done = rollup_days.compact(db, newest(db), max_days=10**6)
        cpu1 = cpu.seconds()
        compaction.update(
            done,
            wall_s=round(time.perf_counter() - started, 1),
            server_cpu_s=None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2),
        )
        mongo.ensure_indexes(db, gin_url)
        say(f"  compaction: {compaction}")
    shape = document_shape(db)
    if "baseline" in layouts and shape != "old":
        raise SystemExit(
            f"{db.name}: its readings have no tenant and device fields, which the baseline's"
            " queries filter on (it would read nothing): load it with the baseline layout"
        )
    say(f"measuring (load average {os.getloadavg()})")
    hot = hot_count(opts.span_days)
    at_size: dict[str, Any] = {
        "document_shape": shape,
        "hot_readings": hot,
        "fleet_readings_per_stream": round((size - hot) / (len(fleet_devices()) * len(STREAMS))),
        "insert_readings_per_s": round(rate),
        "load_wall_s": round(wall, 1),
        "derived_write_s": round(derived_s, 1),
        "load_server_cpu_ms_per_1k": None if per_1k is None else r(per_1k),
        "compaction": compaction,
        "explain": explains(db),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    if gin_url:
        at_size["gin_pending_pages"] = gin_pending_pages(gin_url, db.name)
    for layout in layouts:
        at_size[layout] = measure(
            db, cpu, layout, opts.runs, opts.budget_s, opts.slow_s, opts.slow_runs
        )
    if getattr(opts, "also_vacuumed", False) and gin_url and "new" in layouts:
        say("VACUUM (ANALYZE), then the new paths again")
        vacuum(gin_url, db.name)
        at_size["gin_pending_pages_vacuumed"] = gin_pending_pages(gin_url, db.name)
        at_size["new_vacuumed"] = measure(
            db, cpu, "new", opts.runs, opts.budget_s, opts.slow_s, opts.slow_runs
        )
    at_size["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    if set(LAYOUTS) <= set(layouts):
        at_size["new_over_baseline_p99"] = {
            q: ratio(at_size["new"][q]["p99_ms"], at_size["baseline"][q]["p99_ms"]) for q in QUERIES
        }
    return at_size


def run_backend(
    base_url: str,
    gin_url: str,
    cpu_url: str,
    sizes: list[int],
    opts: argparse.Namespace,
    layouts: tuple[str, ...] = LAYOUTS,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Each size in its own fresh database (dropped after it is measured): every size is
    the same span of device time, so a bigger one is not a continuation of a smaller."""
    result: dict[str, Any] = {"layouts": list(layouts), "sizes": {}}
    reuse = dict(item.split("=", 1) for item in getattr(opts, "reuse", "").split(",") if item)
    for size in sizes:
        name = reuse.get(str(size), "")
        with fresh_db(base_url, name, keep=opts.keep or bool(name)) as db:
            say(f"database {db.name}" + (" (reused: measured only)" if name else ""))
            at_size = measure_size(db, gin_url, cpu_url, size, opts, layouts, load_it=not name)
            result["sizes"][str(size)] = {"database": db.name, **at_size}
        if progress is not None:
            progress(result)
    return result


# -- servers and databases -----------------------------------------------------------
@contextmanager
def fresh_db(base_url: str, name: str = "", keep: bool = False) -> Iterator[Database]:
    """A database of its own (``bench-reads-<random>`` unless ``name``), dropped after
    unless ``keep``."""
    client: MongoClient = MongoClient(base_url, tz_aware=True, serverSelectionTimeoutMS=10_000)
    name = name or f"bench-reads-{uuid.uuid4().hex[:10]}"
    try:
        yield client[name]
    finally:
        if not keep:
            with suppress(Exception):
                client.drop_database(name)
        client.close()


@contextmanager
def sqlite_ferretdb() -> Iterator[str]:
    """A private FerretDB on SQLite (the services' binary) in a temporary directory."""
    with (
        tempfile.TemporaryDirectory(prefix="fairway-reads-sqlite-") as tmp,
        harness.sqlite_ferretdb(Path(tmp)) as (url, _proc),
    ):
        yield url


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
    """p99 per query and size, documents returned, and growth largest/smallest, of one
    layout; ``growth_per_returned`` divides by the growth of what was returned (only the
    1-day report returns more as the fleet gets denser)."""
    sizes = list(result["sizes"])
    at = {q: {s: result["sizes"][s][layout][q] for s in sizes} for q in QUERIES}
    p99 = {q: {s: at[q][s]["p99_ms"] for s in sizes} for q in QUERIES}
    p50 = {q: {s: at[q][s]["p50_ms"] for s in sizes} for q in QUERIES}
    returned = {q: {s: at[q][s]["returned"] for s in sizes} for q in QUERIES}
    first, last = sizes[0], sizes[-1]
    growth = {q: (ratio(p99[q][last], p99[q][first]) if len(sizes) > 1 else None) for q in QUERIES}
    per_returned = {
        q: (
            ratio(
                p99[q][last] / max(returned[q][last], 1), p99[q][first] / max(returned[q][first], 1)
            )
            if len(sizes) > 1
            else None
        )
        for q in QUERIES
    }
    return {
        "p99_ms": p99,
        "p50_ms": p50,
        "returned": returned,
        "growth": growth,
        "growth_per_returned": per_returned,
    }


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
    p.add_argument(
        "--span-days", type=float, default=SPAN_DAYS, help="device time every size spreads over"
    )
    p.add_argument("--runs", type=int, default=30, help="timed runs per query and size")
    p.add_argument(
        "--budget-s",
        type=float,
        default=180.0,
        help="stop a query's runs after this long (at least 5 runs)",
    )
    p.add_argument(
        "--slow-s", type=float, default=20.0, help="a warm-up slower than this: --slow-runs only"
    )
    p.add_argument("--slow-runs", type=int, default=2, help="timed runs of a slow query")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="which layouts to measure")
    p.add_argument("--keep", action="store_true", help="keep the databases (names in the JSON)")
    p.add_argument(
        "--reuse", default="", help="size=database,...: measure a kept database, no load"
    )
    p.add_argument("--progress", type=Path, help="write the summary so far here after each size")
    p.add_argument("--sqlite-runs", type=int, default=3, help="runs per query on SQLite")
    p.add_argument("--no-sqlite", action="store_true", help="skip the SQLite backend")
    p.add_argument(
        "--sqlite-new", action="store_true", help="also the new paths on SQLite (very long)"
    )
    p.add_argument("--no-gin", action="store_true", help="PostgreSQL without Fairway's GIN indexes")
    p.add_argument(
        "--also-vacuumed",
        action="store_true",
        help="after measuring, VACUUM the tables and measure the new paths again",
    )
    p.add_argument(
        "--private",
        action="store_true",
        help="a FerretDB of its own on its own PostgreSQL database (FAIRWAY_POSTGRES_URL's server)",
    )
    p.add_argument(
        "--gin-fastupdate",
        choices=("on", "off"),
        default=ferretdb.GIN_OPTIONS.get("fastupdate", "on"),
        help="the GIN indexes' fastupdate (pending list) setting",
    )
    args = p.parse_args()
    ferretdb.GIN_OPTIONS["fastupdate"] = args.gin_fastupdate
    with ExitStack() as stack:
        run(args, stack)


def run(args: argparse.Namespace, stack: ExitStack) -> None:
    base_url = MONGO_BASE
    postgres_url = os.environ.get("FAIRWAY_POSTGRES_URL", "")
    args.private_server = None
    if args.private:
        from benchmarks.write_cost import private_server

        args.private_server = stack.enter_context(private_server(postgres_url))
        base_url, postgres_url = args.private_server.mongo_url, args.private_server.private_url
    sizes = [int(s) for s in args.sizes.split(",")] + ([5_000_000] if args.with_5m else [])
    sizes = sorted({round(s * args.scale) for s in sizes})
    gin_url = "" if args.no_gin else postgres_url
    with fresh_db(base_url) as db:
        db[mongo.TELEMETRY].insert_one({"_id": "probe"})  # the backend shows in a plan
        name = backend_of(db)
    say(f"{name} at {urllib.parse.urlsplit(base_url).netloc}: sizes {sizes}")
    if name == "ferretdb-postgresql" and not gin_url:
        name += "-no-gin"
    run_meta = meta(
        NAME,
        args.scale,
        sizes=sizes,
        span_days=args.span_days,
        hot_devices=[d for _, d in hot_devices()],
        runs=args.runs,
        sqlite_runs=args.sqlite_runs,
        gin_fastupdate=args.gin_fastupdate,
        backend=name + (" (private FerretDB, own PostgreSQL database)" if args.private else ""),
        layouts={
            "baseline": "today's queries on telemetry (one document per reading)",
            "new": "device_state, history by hk, rollups by mk/dk (charts) and tk (report)",
        },
    )

    def progress(result: dict[str, Any]) -> None:
        if args.progress is not None:
            partial = {"meta": run_meta, **summary(result), "backends": {name: result}}
            args.progress.write_text(orjson.dumps(partial, default=str).decode())

    backends: dict[str, Any] = {
        name: run_backend(
            base_url,
            gin_url if name == "ferretdb-postgresql" else "",
            postgres_url if name.startswith("ferretdb-postgresql") else "",
            sizes,
            args,
            tuple(args.layouts.split(",")),
            progress=progress,
        )
    }
    if not args.no_sqlite:
        with sqlite_ferretdb() as url:
            say(f"ferretdb-sqlite (private): size {sizes[0]:,}, {args.sqlite_runs} runs per query")
            layouts = LAYOUTS if args.sqlite_new else ("baseline",)
            opts = argparse.Namespace(
                **{**vars(args), "runs": args.sqlite_runs, "budget_s": 600, "private_server": None}
            )
            backends["ferretdb-sqlite"] = run_backend(url, "", "", sizes[:1], opts, layouts)
    emit(
        {
            "meta": {**run_meta, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            **summary(backends[name]),
            "backends": {n: {**summary(b), **b} for n, b in backends.items()},
        }
    )


if __name__ == "__main__":
    main()
