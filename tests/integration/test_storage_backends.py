"""Storage on both FerretDB backends: PostgreSQL (the default) and SQLite.

The services' database is FerretDB on PostgreSQL (``scripts/services.sh``), where
``ensure_indexes`` adds GIN indexes and the server's own plan must show them in use.
A second FerretDB on SQLite (same binary, private state in a temporary directory)
is started for the session, and the storage round-trips run against both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from pymongo import DESCENDING, MongoClient
from pymongo.database import Database

from fairway.kernel.contract import split_reading_id, to_document
from fairway.kernel.settings import Settings
from fairway.storage import ferretdb, mongo, registry
from scheduler.rollup_folder import RollupFolder
from scheduler.sink import MongoSink
from tests.harness import sqlite_ferretdb

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def backend_of(db: Database) -> str:
    """``ferretdb-postgresql``, ``ferretdb-sqlite`` or ``mongodb``."""
    if "ferretdbVersion" not in db.client.admin.command("buildInfo"):
        return "mongodb"
    db["probe"].insert_one({"_id": "probe"})  # the plan needs a collection
    on_postgres = ferretdb.is_ferretdb_postgresql(db, "probe")
    db.drop_collection("probe")
    return "ferretdb-postgresql" if on_postgres else "ferretdb-sqlite"


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private FerretDB on SQLite, from the binary scripts/services.sh built."""
    with sqlite_ferretdb(tmp_path_factory.mktemp("ferretdb-sqlite")) as (url, _proc):
        yield url


@pytest.fixture(params=["services", "sqlite"])
def db(
    request: pytest.FixtureRequest, base_settings: Settings, sqlite_url: str
) -> Iterator[Database]:
    """A fresh database on the services' server, then on the private SQLite FerretDB."""
    url = base_settings.mongo_url if request.param == "services" else sqlite_url
    client: MongoClient = MongoClient(url, tz_aware=True, serverSelectionTimeoutMS=5000)
    name = f"t-{uuid.uuid4().hex[:10]}"
    database = client[name]
    if request.param == "sqlite":
        assert backend_of(database) == "ferretdb-sqlite"
    mongo.ensure_indexes(database, "" if request.param == "sqlite" else None)
    try:
        yield database
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture
def pg_db(base_settings: Settings) -> Iterator[Database]:
    """A fresh database on the services' FerretDB, which must run on PostgreSQL."""
    client: MongoClient = MongoClient(base_settings.mongo_url, tz_aware=True)
    name = f"t-{uuid.uuid4().hex[:10]}"
    database = client[name]
    backend = backend_of(database)
    if backend != "ferretdb-postgresql":
        client.drop_database(name)
        client.close()
        pytest.fail(f"the services run {backend}, not FerretDB on PostgreSQL (the default)")
    assert base_settings.postgres_url, (
        "FerretDB runs on PostgreSQL but FAIRWAY_POSTGRES_URL is empty (make exports it; "
        "scripts/services.sh up prints it)"
    )
    try:
        yield database
    finally:
        client.drop_database(name)
        client.close()


def body(tenant: str, device: str, n: int, stream: str = "env") -> bytes:
    """What the relay publishes for reading ``n`` (ten seconds apart)."""
    ts = (T0 + timedelta(seconds=10 * n)).timestamp()
    return orjson.dumps(
        {
            "tenant": tenant,
            "device": device,
            "stream": stream,
            "id": f"m{n:05d}",
            "ts": ts,
            "received": ts + 0.5,
            "values": {"temp": 20.0 + n % 7},
        }
    )


def hour_key(tenant: str, device: str, n: int) -> str:
    return f"{tenant}:{device}:{T0 + timedelta(seconds=10 * n):%Y%m%d%H}"


@pytest.fixture
def sink(db: Database) -> Iterator[MongoSink]:
    """A sink with no threads of its own (state written per batch, rollups folded at
    close), closed after the test: a thread left ticking against a dropped database logs
    a traceback every tick, and on Python 3.11 formatting one (``ast.parse`` for the
    carets) races the main thread's ``ast.parse`` (a SystemError in werkzeug's routing,
    seen in a full run)."""
    made = MongoSink(db, device_state_flush_s=0, rollups=RollupFolder(db, start_thread=False))
    yield made
    made.close()


# -- both backends ---------------------------------------------------------------------
def test_insert_many_stores_once_and_reports_duplicates(db: Database, sink: MongoSink) -> None:
    first = sink.write([body("acme", "d1", n) for n in range(5)] + [body("acme", "d1", 1)])
    # Per message (a bundle of one reading each here): readings found already stored.
    assert (first.stored, first.duplicates, first.refused) == (5, [0, 0, 0, 0, 0, 1], [])
    again = sink.write([body("acme", "d1", 4), body("acme", "d1", 5), body("acme", "d1", 0)])
    assert (again.stored, again.stored_each, again.duplicates) == (1, [0, 1, 0], [1, 0, 1])
    ids = sorted(d["_id"] for d in db[mongo.TELEMETRY].find({}, {"_id": 1}))
    assert ids == [f"acme:d1:m{n:05d}" for n in range(6)]


def test_find_by_tenant_and_device_sorted_by_ts(db: Database, sink: MongoSink) -> None:
    order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]
    bodies = [
        body(t, d, n) for n in order for t, d in (("acme", "d1"), ("acme", "d2"), ("zeta", "d1"))
    ]
    assert sink.write(bodies).stored == 30
    # Lean readings: a device's are found by its hour key (tenant and device are in _id).
    acme_d1 = {"hk": hour_key("acme", "d1", 0)}
    found = list(db[mongo.TELEMETRY].find(acme_d1).sort("ts", DESCENDING).limit(4))
    assert [split_reading_id(d["_id"])[2] for d in found] == [
        "m00009",
        "m00008",
        "m00007",
        "m00006",
    ]
    assert all(split_reading_id(d["_id"])[:2] == ("acme", "d1") for d in found)
    assert all("tenant" not in d and "device" not in d and "msg_id" not in d for d in found)
    span = {"$gte": T0 + timedelta(seconds=20), "$lt": T0 + timedelta(seconds=50)}
    zeta_d1 = {"hk": hour_key("zeta", "d1", 0), "ts": span}
    ranged = db[mongo.TELEMETRY].find(zeta_d1).sort("ts", 1)
    assert [split_reading_id(d["_id"])[2] for d in ranged] == ["m00002", "m00003", "m00004"]
    assert found[0]["ts"] == T0 + timedelta(seconds=90)  # datetimes round-trip exactly


def test_registry_round_trip(db: Database) -> None:
    registry.create_tenant(db, "acme", weight=2, max_backlog=1000)
    registry.create_tenant(db, "zeta", weight=1, max_backlog=1000)
    creds = registry.register_device(db, "acme", "acme-1")
    registry.register_device(db, "acme", "acme-2")
    registry.register_device(db, "zeta", "zeta-1")
    with pytest.raises(mongo.AlreadyExists):
        registry.register_device(db, "zeta", "acme-1")
    assert registry.verify_device_password(db, "acme-1", creds["password"])
    assert not registry.verify_device_password(db, "acme-1", "wrong")
    assert [d.id for d in registry.list_devices(db, "acme")] == ["acme-1", "acme-2"]
    assert registry.set_device_enabled(db, "acme-1", False)
    assert not registry.verify_device_password(db, "acme-1", creds["password"])
    found = registry.find_devices(db, ["acme-1", "zeta-1", "nope"])
    assert found["nope"] is None and found["zeta-1"] is not None
    assert found["acme-1"] is not None and not found["acme-1"].enabled
    assert [(t.id, t.weight) for t in registry.list_tenants(db)] == [("acme", 2), ("zeta", 1)]
    doc = registry.device_document(db, "acme-2")
    assert doc is not None and "password_hash" not in doc and doc["tenant"] == "acme"


def test_find_by_ids_answers_the_same_keyed_or_in_one_query(db: Database) -> None:
    """A few ids take one ``_id`` equality each, more one ``$in``; the answer is the same
    set either way: unknown ids left out, a repeated id once, the projection applied."""
    table = db["by_ids"]
    table.insert_many([{"_id": f"k{i:03d}", "n": i, "pad": "x"} for i in range(40)])
    few = ["k005", "k001", "nope", "k005"]
    many = [f"k{i:03d}" for i in range(0, 40, 2)] + ["nope"]
    assert len(many) > mongo.KEYED_LOOKUPS_MAX >= len(few)
    for ids in (few, many):
        expected = sorted({i for i in ids if i != "nope"})
        for keyed_max in (mongo.KEYED_LOOKUPS_MAX, None, 0):
            docs = mongo.find_by_ids(table, ids, {"n": 1}, keyed_max=keyed_max)
            assert sorted(d["_id"] for d in docs) == expected
            assert all(set(d) == {"_id", "n"} and d["n"] == int(d["_id"][1:]) for d in docs)
    assert mongo.find_by_ids(table, []) == []


# -- PostgreSQL: the GIN indexes exist and serve the pushed-down filters ----------------
def backing_tables(postgres_url: str, schema: str) -> dict[str, str]:
    with psycopg.connect(postgres_url) as connection:
        return ferretdb.backing_tables(connection, schema)


def gin_indexes(postgres_url: str, schema: str) -> dict[str, str]:
    """Index name -> definition of the GIN indexes in ``schema``."""
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,)
        ).fetchall()
    return {name: definition for name, definition in rows if "USING gin" in definition}


def test_ensure_indexes_creates_a_gin_index_per_equality_field(
    pg_db: Database, base_settings: Settings
) -> None:
    mongo.ensure_indexes(pg_db, base_settings.postgres_url)
    mongo.ensure_indexes(pg_db, base_settings.postgres_url)  # idempotent
    tables = backing_tables(base_settings.postgres_url, pg_db.name)
    indexes = gin_indexes(base_settings.postgres_url, pg_db.name)
    for collection, fields in mongo.EQUALITY_FIELDS.items():
        assert collection in tables, f"{collection} has no table: {tables}"
        for field in fields:
            name = ferretdb.index_name(tables[collection], field)
            assert name in indexes, f"no GIN index on {collection}.{field}: {sorted(indexes)}"
            assert f"(_jsonb -> '{field}'::text)" in indexes[name]
    assert len(indexes) == sum(len(f) for f in mongo.EQUALITY_FIELDS.values())


def test_gin_indexes_of_fields_no_longer_listed_are_dropped(
    pg_db: Database, base_settings: Settings
) -> None:
    url = base_settings.postgres_url
    mongo.ensure_indexes(pg_db, url)  # the collections and their tables
    wider = {**mongo.EQUALITY_FIELDS, mongo.TELEMETRY: ("hk", "tenant", "device")}
    ferretdb.ensure_gin_indexes(pg_db, url, wider)  # what an older release created
    table = backing_tables(url, pg_db.name)[mongo.TELEMETRY]
    assert ferretdb.index_name(table, "device") in gin_indexes(url, pg_db.name)
    mongo.ensure_indexes(pg_db, url)
    on_telemetry = {n for n in gin_indexes(url, pg_db.name) if n.startswith(f"{table}_")}
    assert on_telemetry == {ferretdb.index_name(table, "hk")}


def gin_options(postgres_url: str, schema: str) -> dict[str, list[str]]:
    """Index name -> storage parameters of the GIN indexes in ``schema``."""
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(
            "SELECT c.relname, c.reloptions FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am a ON a.oid = c.relam "
            "WHERE n.nspname = %s AND a.amname = 'gin'",
            (schema,),
        ).fetchall()
    return {name: options or [] for name, options in rows}


def test_gin_indexes_keep_a_bounded_pending_list(pg_db: Database, base_settings: Settings) -> None:
    url = base_settings.postgres_url
    mongo.ensure_indexes(pg_db, url)
    options = gin_options(url, pg_db.name)
    wanted = ["fastupdate=on", "gin_pending_list_limit=64"]
    assert options and all(sorted(o) == wanted for o in options.values()), options
    # Indexes an older release made (no pending list; PostgreSQL's 4 MB default with
    # entries pending) are brought in line, and what they hold stays readable.
    table = backing_tables(url, pg_db.name)[mongo.TELEMETRY]
    name = ferretdb.index_name(table, "hk")
    index = f'"{pg_db.name}"."{name}"'
    for older in ("fastupdate = off", "fastupdate = on"):
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"ALTER INDEX {index} RESET (gin_pending_list_limit)")
            connection.execute(f"ALTER INDEX {index} SET ({older})")
        start = pg_db[mongo.TELEMETRY].count_documents({})
        pg_db[mongo.TELEMETRY].insert_many(
            [{"_id": f"r{start + i}", "hk": f"a:d:{start + i}"} for i in range(50)]
        )
        assert gin_options(url, pg_db.name)[name] == [older.replace(" ", "")]
        mongo.ensure_indexes(pg_db, url)
        assert sorted(gin_options(url, pg_db.name)[name]) == wanted
        assert len(list(pg_db[mongo.TELEMETRY].find({"hk": f"a:d:{start + 7}"}))) == 1


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a PostgreSQL JSON plan, depth first."""
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


def index_scans(db: Database, query: dict[str, Any], **options: Any) -> set[str]:
    """Names of the indexes PostgreSQL's plan scans for a find (FerretDB's ``explain``)."""
    explained = db.command("explain", {"find": mongo.TELEMETRY, "filter": query, **options})
    assert explained["filterPushdown"] is True, explained
    nodes = plan_nodes(explained["queryPlanner"]["Plan"])
    scans = {n["Index Name"] for n in nodes if n["Node Type"] == "Bitmap Index Scan"}
    assert scans, f"no index scan for {query}: {json.dumps(explained['queryPlanner'])[:2000]}"
    return scans


def test_hour_key_queries_use_their_gin_index(pg_db: Database, base_settings: Settings) -> None:
    mongo.ensure_indexes(pg_db, base_settings.postgres_url)  # before data, as in production
    docs = []
    for device in (f"d{j:02d}" for j in range(20)):
        for tenant in ("acme", "zeta"):
            for n in range(0, 1800, 10):  # 180 readings over five hours per device
                docs.append(mongo_document(tenant, device, n))
    pg_db[mongo.TELEMETRY].insert_many(docs, ordered=False)
    mongo.ensure_indexes(pg_db, base_settings.postgres_url)  # ANALYZE with the data in
    table = backing_tables(base_settings.postgres_url, pg_db.name)[mongo.TELEMETRY]

    by_hour = index_scans(pg_db, {"hk": hour_key("acme", "d07", 1200)})
    assert by_hour == {ferretdb.index_name(table, "hk")}
    found = list(pg_db[mongo.TELEMETRY].find({"hk": hour_key("acme", "d07", 1200)}))
    assert len(found) == 36 and {split_reading_id(d["_id"])[1] for d in found} == {"d07"}


def mongo_document(tenant: str, device: str, n: int) -> dict[str, Any]:
    """A stored reading with its hour key, as the sink writes it."""
    doc = to_document(body(tenant, device, n))
    doc["hk"] = hour_key(tenant, device, n)
    return doc
