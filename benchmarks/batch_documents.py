"""The database's CPU per stored reading: one document per reading against one per device batch.

    python -m benchmarks.batch_documents [--scale S] [--readings 20000] [--rounds 3]

Issue 11's next database lever, measured before anyone builds it. The same readings
(end_to_end's device-batch shape: 10 tenants x 5 devices, device messages of 10 readings
of one stream sharing their receipt time, write batches of 250 readings) are written
three ways, each into a private FerretDB of its own (the services' binary and Go
settings) on a PostgreSQL database of its own of the shared PostgreSQL
(:func:`benchmarks.write_cost.private_server`), with the same indexes
(:func:`fairway.storage.mongo.ensure_indexes`: the unique ``_id`` and the ``hk`` GIN):

* ``reading``: today's layout, one document per reading
  (:class:`scheduler.documents.BatchDocuments`, the sink's ``w`` included);
* ``batch``: one document per device batch, ``_id`` from the batch message's id, the
  readings in an array ``r`` of ``{ts, values}`` (a reading's id is then
  ``<batch _id>#<index>``: no id stored per reading);
* ``batch_ids``: the same, each element also holding its reading's id (what a batch
  whose readings carry their own ids, or a partial batch, would have to store).

Each round writes a fresh database of each arm, in rotating order, after one untimed
write batch; ``insert_many(ordered=False)`` per write batch, as the sink. CPU per stored
reading from ``/proc``: FerretDB's process and its database's PostgreSQL backends (the
shared cluster's WAL writer and checkpointer are not counted); the client (building the
documents and BSON) apart.

Once, after the last round's writes (not timed with them): the stored size per reading
(``pg_column_size`` of the row's JSONB and of the row, the table's and its indexes' size),
and the read path of a device-hour in each layout (``find`` by ``hk``, then sorted
newest first and cut to a page in Python, as ``fairway.storage.telemetry`` does; for the
batch layouts also the array expanded in Python, and an ``$unwind`` aggregation if
FerretDB runs it). Last, whether FerretDB 1.24 enforces a unique index on the readings'
ids inside the arrays (``r.id``) across documents: what exactly-once per reading would
need if a reading could be stored both in a batch document and alone.

Target: batch / reading database CPU per stored reading <= 0.5 (the lever is worth
building only if it halves the database's share).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure

from benchmarks.common import emit, meta, parser, r, require_postgres_url, say, scaled
from benchmarks.write_cost import PrivateServer, private_server
from fairway.kernel.contract import hour_key, reading_id
from fairway.storage import ferretdb, mongo
from scheduler.documents import BatchDocuments

NAME = "batch_documents"
TENANTS = [f"bd{t:02d}" for t in range(10)]
DEVICES_PER_TENANT = 5
PER_BATCH = 10
BATCH_READINGS = 250
ARMS = ("reading", "batch", "batch_ids")
WRITER = "w-bench"
PAGE = 100
TARGET_RATIO = 0.5
_fromtimestamp = datetime.fromtimestamp

Reading = dict[str, Any]


def device_batches(count: int, round_no: int) -> list[list[Reading]]:
    """``count`` readings as device batches of ``PER_BATCH`` (relay output, tenant attached),
    devices in turn; a batch's readings 0.1 s apart, received together just after."""
    out: list[list[Reading]] = []
    devices = [(t, f"{t}-d{j}") for t in TENANTS for j in range(DEVICES_PER_TENANT)]
    seq = 0
    while len(out) * PER_BATCH < count:
        tenant, device = devices[seq % len(devices)]
        now = time.time()
        msg_id = f"r{round_no}-m{seq}"
        out.append(
            [
                {
                    "tenant": tenant,
                    "device": device,
                    "stream": "default",
                    "id": f"{msg_id}#{k}",
                    "batch": msg_id,
                    "ts": now - (PER_BATCH - 1 - k) * 0.1,
                    "received": now + 0.002,
                    "values": {"temp": 20 + (seq * PER_BATCH + k) % 500 / 100, "ok": k % 7 != 0},
                }
                for k in range(PER_BATCH)
            ]
        )
        seq += 1
    return out


def batch_document(batch: list[Reading], with_ids: bool) -> dict[str, Any]:
    """One device batch as one document: what the readings share once, then ``r``."""
    first = batch[0]
    ts0 = _fromtimestamp(first["ts"], UTC)
    elements: list[dict[str, Any]] = []
    for reading in batch:
        element: dict[str, Any] = {"id": reading["id"]} if with_ids else {}
        element["ts"] = _fromtimestamp(reading["ts"], UTC)
        element["values"] = reading["values"]
        elements.append(element)
    return {
        "_id": reading_id(first["tenant"], first["device"], first["batch"]),
        "hk": hour_key(first["tenant"], first["device"], ts0),
        "stream": first["stream"],
        "ts": ts0,
        "received": _fromtimestamp(first["received"], UTC),
        "r": elements,
        "w": WRITER,
    }


def documents(arm: str, batches: list[list[Reading]]) -> list[dict[str, Any]]:
    """The documents of one write batch in ``arm``'s layout."""
    if arm == "reading":
        document = BatchDocuments(WRITER).document
        return [document(reading) for batch in batches for reading in batch]
    return [batch_document(batch, arm == "batch_ids") for batch in batches]


def write_round(
    server: PrivateServer, db: Database, arm: str, data: list[list[Reading]], warm: list
) -> dict[str, Any]:
    """Write ``data`` in ``arm``'s layout into ``db`` (fresh); CPU per stored reading."""
    collection = db[mongo.TELEMETRY]
    mongo.ensure_indexes(db, server.private_url)
    collection.insert_many(documents(arm, warm), ordered=False)
    per_write = BATCH_READINGS // PER_BATCH
    count = len(data) * PER_BATCH
    before, client0, started = server.snapshot(), time.process_time(), time.perf_counter()
    for start in range(0, len(data), per_write):
        collection.insert_many(documents(arm, data[start : start + per_write]), ordered=False)
    wall = time.perf_counter() - started
    after, client_s = server.snapshot(), time.process_time() - client0
    ferret_s = after[0] - before[0]
    backends_s = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid != 0)
    docs = collection.count_documents({})  # after the timing: a full scan on FerretDB
    per_doc = 1 if arm == "reading" else PER_BATCH
    assert docs * per_doc == count + len(warm) * PER_BATCH, f"{arm}: {docs} documents"
    return {
        "readings_per_s": round(count / wall),
        "ferretdb_us_per_reading": r(ferret_s / count * 1e6),
        "postgres_us_per_reading": r(backends_s / count * 1e6),
        "server_us_per_reading": r((ferret_s + backends_s) / count * 1e6),
        "client_us_per_reading": r(client_s / count * 1e6),
    }


def stored_size(server: PrivateServer, db: Database, arm: str) -> dict[str, Any]:
    """Bytes per reading of the telemetry table's rows, heap and indexes."""
    import psycopg

    per_doc = 1 if arm == "reading" else PER_BATCH
    with psycopg.connect(server.private_url, autocommit=True, connect_timeout=10) as conn:
        table = ferretdb.backing_tables(conn, db.name)[mongo.TELEMETRY]
        target = f"{ferretdb.quote(db.name)}.{ferretdb.quote(table)}"
        row = conn.execute(
            f"SELECT count(*), avg(pg_column_size(_jsonb)), avg(pg_column_size(t.*)),"
            f" avg(octet_length(_jsonb::text)),"
            f" pg_relation_size('{target}'), pg_indexes_size('{target}') FROM {target} t"
        ).fetchone()
        assert row is not None
        rows, jsonb, whole, text, heap, indexes = row
        indexes_each = {
            name: size
            for name, size in conn.execute(
                "SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes"
                " WHERE schemaname = %s AND relname = %s",
                (db.name, table),
            ).fetchall()
        }
    readings = rows * per_doc
    return {
        "documents": rows,
        "jsonb_bytes_per_document": r(float(jsonb)),
        "jsonb_bytes_per_reading": r(float(jsonb) / per_doc),
        "row_bytes_per_reading": r(float(whole) / per_doc),
        # The JSONB as text, before PostgreSQL's compression of values over ~2 kB.
        "jsonb_text_bytes_per_reading": r(float(text) / per_doc),
        "heap_bytes_per_reading": r(heap / readings),
        "index_bytes_per_reading": r(indexes / readings),
        "index_bytes_per_reading_each": {k: r(v / readings) for k, v in indexes_each.items()},
    }


def expand(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A batch document's readings as reading documents (``_id`` ``<batch _id>#<index>``)."""
    base = doc["_id"]
    return [
        {
            "_id": e.get("id") or f"{base}#{i}",
            "stream": doc["stream"],
            "ts": e["ts"],
            "received": doc["received"],
            "values": e["values"],
        }
        for i, e in enumerate(doc["r"])
    ]


def page(docs: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Newest first by ``(ts, _id)``, one page: what ``page_history`` does with an hour."""
    docs.sort(key=lambda d: (d["ts"], d["_id"]), reverse=True)
    return docs[:size]


def timed_reads(
    server: PrivateServer, label: str, hks: list[str], read: Any, size: int
) -> dict[str, Any]:
    """``read(hk)`` for each hour key: wall ms per read (median), server and client CPU."""
    times = []
    before, client0 = server.snapshot(), time.process_time()
    for hk in hks:
        started = time.perf_counter()
        got = read(hk)
        times.append(time.perf_counter() - started)
        assert len(got) == size, f"{label}: {len(got)} readings for {hk}"
    after, client_s = server.snapshot(), time.process_time() - client0
    server_s = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    return {
        "ms_per_read_median": r(statistics.median(times) * 1e3, 2),
        "server_ms_per_read": r(server_s / len(hks) * 1e3, 2),
        "client_ms_per_read": r(client_s / len(hks) * 1e3, 2),
    }


def reads(
    server: PrivateServer, db: Database, arm: str, data: list[list[Reading]]
) -> dict[str, Any]:
    """A device-hour's page of history in ``arm``'s layout, each way that works."""
    collection = db[mongo.TELEMETRY]
    # Each device's busiest hour of this round (an hour may have turned during it).
    by_hk: dict[str, int] = {}
    for batch in data:
        first = batch[0]
        hk = hour_key(first["tenant"], first["device"], _fromtimestamp(first["ts"], UTC))
        by_hk[hk] = by_hk.get(hk, 0) + PER_BATCH
    best: dict[str, tuple[int, str]] = {}
    for hk, n in by_hk.items():
        device = hk.rsplit(":", 1)[0]
        if n > best.get(device, (0, ""))[0]:
            best[device] = (n, hk)
    hks = [hk for _n, hk in best.values()]
    per_hour = min(n for n, _hk in best.values())
    size = min(PAGE, per_hour)
    out: dict[str, Any] = {
        "device_hours": len(hks),
        "readings_per_hour_min": per_hour,
        "page": size,
    }

    def find(hk: str) -> list[dict[str, Any]]:
        return list(collection.find({"hk": hk}, {"tenant": 0, "hk": 0}))

    if arm == "reading":
        out["find_sort_in_python"] = timed_reads(
            server, arm, hks, lambda hk: page(find(hk), size), size
        )
        return out
    out["find_expand_sort_in_python"] = timed_reads(
        server,
        arm,
        hks,
        lambda hk: page([e for d in find(hk) for e in expand(d)], size),
        size,
    )
    pipelines = {
        "unwind_sort_limit": lambda hk: [
            {"$match": {"hk": hk}},
            {"$unwind": "$r"},
            {"$sort": {"r.ts": -1}},
            {"$limit": size},
        ],
        "unwind_sort_limit_project": lambda hk: [
            {"$match": {"hk": hk}},
            {"$unwind": "$r"},
            {"$sort": {"r.ts": -1}},
            {"$limit": size},
            {"$project": {"stream": 1, "received": 1, "ts": "$r.ts", "values": "$r.values"}},
        ],
        "unwind_with_index": lambda hk: [
            {"$match": {"hk": hk}},
            {"$unwind": {"path": "$r", "includeArrayIndex": "i"}},
            {"$sort": {"r.ts": -1}},
            {"$limit": size},
            {
                "$project": {
                    "stream": 1,
                    "received": 1,
                    "i": 1,
                    "ts": "$r.ts",
                    "values": "$r.values",
                }
            },
        ],
    }
    for name, pipeline in pipelines.items():
        try:
            out[f"aggregate_{name}"] = timed_reads(
                server,
                name,
                hks,
                lambda hk, p=pipeline: list(collection.aggregate(p(hk))),
                size,
            )
        except (OperationFailure, AssertionError, KeyError) as exc:
            out[f"aggregate_{name}"] = {"error": str(exc)[:300]}
    try:
        plan = db.command(
            "explain",
            {
                "aggregate": mongo.TELEMETRY,
                "pipeline": pipelines["unwind_sort_limit"](hks[0]),
                "cursor": {},
            },
        )
        out["aggregate_explain_pushdown"] = {
            k: v for k, v in plan.items() if "pushdown" in k.lower()
        }
    except OperationFailure as exc:
        out["aggregate_explain_pushdown"] = {"error": str(exc)[:300]}
    return out


def unique_array_ids(db: Database) -> dict[str, Any]:
    """Whether a unique index on ``r.id`` refuses a reading id already in another document."""
    scratch = db[f"uniq_{uuid.uuid4().hex[:6]}"]
    try:
        scratch.create_index([("r.id", 1)], unique=True, name="r_id")
    except OperationFailure as exc:
        return {"index": "refused", "error": str(exc)[:300]}
    scratch.insert_one({"_id": "t:d:m1", "r": [{"id": "a"}, {"id": "b"}]})
    try:
        scratch.insert_one({"_id": "t:d:m2", "r": [{"id": "b"}, {"id": "c"}]})
        enforced = False
    except DuplicateKeyError:
        enforced = True
    try:
        scratch.insert_one({"_id": "t:d:m3", "r": [{"id": "a"}, {"id": "b"}]})
        whole_array_equal_refused = False
    except DuplicateKeyError:
        whole_array_equal_refused = True
    scratch.drop()
    return {
        "index": "created",
        "overlapping_reading_refused": enforced,
        "identical_array_refused": whole_array_equal_refused,
    }


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--readings", type=int, default=20_000, help="per arm and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    count = scaled(args.readings, args.scale, minimum=BATCH_READINGS)
    count -= count % BATCH_READINGS
    postgres_url = require_postgres_url("the private FerretDBs' PostgreSQL")
    run_meta = meta(
        NAME,
        args.scale,
        readings=count,
        rounds=args.rounds,
        readings_per_device_batch=PER_BATCH,
        batch_readings=BATCH_READINGS,
    )
    rounds: list[dict[str, Any]] = []
    once: dict[str, Any] = {}
    with ExitStack() as stack:
        servers = {arm: stack.enter_context(private_server(postgres_url)) for arm in ARMS}
        clients: dict[str, MongoClient] = {
            arm: MongoClient(s.mongo_url, tz_aware=True) for arm, s in servers.items()
        }
        for n in range(args.rounds):
            data = device_batches(count, n)
            warm = device_batches(BATCH_READINGS, -1 - n)
            order = list(ARMS[n % len(ARMS) :] + ARMS[: n % len(ARMS)])
            found: dict[str, Any] = {"order": order}
            for arm in order:
                db = clients[arm][f"bd-{uuid.uuid4().hex[:8]}"]
                try:
                    found[arm] = write_round(servers[arm], db, arm, data, warm)
                    if n == args.rounds - 1:
                        once[arm] = {
                            "size": stored_size(servers[arm], db, arm),
                            "reads": reads(servers[arm], db, arm, data),
                        }
                finally:
                    clients[arm].drop_database(db.name)
            found["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            say(f"round {n}: {found}")
            rounds.append(found)
        once["unique_index_on_array_ids"] = unique_array_ids(clients["batch"]["bd-uniq"])
        clients["batch"].drop_database("bd-uniq")
        for client in clients.values():
            client.close()

    keys = (
        "ferretdb_us_per_reading",
        "postgres_us_per_reading",
        "server_us_per_reading",
        "client_us_per_reading",
        "readings_per_s",
    )
    medians = {
        arm: {k: r(statistics.median(rd[arm][k] for rd in rounds)) for k in keys} for arm in ARMS
    }
    ratios = {
        f"{arm}/reading": round(
            statistics.median(
                rd[arm]["server_us_per_reading"] / rd["reading"]["server_us_per_reading"]
                for rd in rounds
            ),
            3,
        )
        for arm in ARMS[1:]
    }
    emit(
        {
            "meta": {**run_meta, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "rounds": rounds,
            "medians": medians,
            "ratios_server_cpu_per_reading": ratios,
            "once": once,
            "targets": {
                f"batch/reading_server_cpu<={TARGET_RATIO}": {
                    "value": ratios["batch/reading"],
                    "met": ratios["batch/reading"] <= TARGET_RATIO,
                },
            },
        }
    )


if __name__ == "__main__":
    main()
