"""The MongoDB client, collection names and indexes.

Only features that both MongoDB (6+) and FerretDB 1.24 support are used.
Connections are passed in (a :class:`pymongo.database.Database`), never global.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from fairway.kernel.settings import Settings
from fairway.storage import ferretdb

TENANTS = "tenants"


DEVICES = "devices"


TELEMETRY = "telemetry"


REJECTIONS = "rejections"
REJECTION_COUNTS = "rejection_counts"  # per tenant, hour and archiver: refusals by reason


DEVICE_STATE = "device_state"


ROLLUPS = "rollups"
ROLLUP_MINUTES = "rollup_minutes"
ROLLUP_PENDING = "rollup_pending"
# A device-stream-day's hourly figures in one document, and per tenant which days have them.
ROLLUP_DAYS = "rollup_days"
ROLLUP_COMPACTION = "rollup_compaction"
# Scheduler processes that fold rollups in memory, and the device-hours each has folded
# but not written yet (what a lost writer's hours are recomputed from).
ROLLUP_WRITERS = "rollup_writers"
ROLLUP_TOUCHED = "rollup_touched"


MIGRATIONS = "migrations"  # journals of one-time migrations (fairway migrate ...)


# Change counters (``{_id: "tenants", version: n}``): every write of a tenant record
# takes the next number and stamps it as the record's ``rev``, so readers ask only for
# what changed (fairway.storage.registry.tenants_changed_since).
VERSIONS = "versions"
# Tombstones of removed tenants (``{_id: tenant, rev, at}``, rev from the same counter),
# so a removal is found among the changes (fairway.storage.registry.remove_tenant).
TENANT_REMOVALS = "tenant_removals"


# Top-level fields queried by equality, per collection. On FerretDB with PostgreSQL these
# get GIN indexes (fairway/storage/ferretdb.py): the only indexes its pushdown can use.
EQUALITY_FIELDS: dict[str, tuple[str, ...]] = {
    # Every read of telemetry is by hour key (history, charts, rollups, reports,
    # retention): an index on any other field would only cost each insert.
    TELEMETRY: ("hk",),
    DEVICES: ("_id", "tenant"),
    DEVICE_STATE: ("_id", "tenant"),
    ROLLUPS: ("_id", "dk", "mk", "tk"),
    ROLLUP_MINUTES: ("_id", "dk"),
    ROLLUP_DAYS: ("_id", "dk", "mk"),
    ROLLUP_COMPACTION: ("_id",),
    ROLLUP_PENDING: ("_id", "tenant"),
    ROLLUP_WRITERS: ("_id",),
    ROLLUP_TOUCHED: ("_id",),
    TENANTS: ("_id",),
    VERSIONS: ("_id",),
    TENANT_REMOVALS: ("_id",),
    REJECTIONS: ("device", "tenant"),
    REJECTION_COUNTS: ("tenant",),
}


DUPLICATE_KEY = 11000
INDEX_NOT_FOUND = 27
NAMESPACE_NOT_FOUND = 26
# The one index telemetry gets on MongoDB (see ensure_indexes): every read of it is an
# ``hk`` equality, some with a ``ts`` range (retention) or order.
TELEMETRY_BTREE = "hk_ts"
# Indexes of telemetry made by older versions, dropped where found: ``tenant_device_ts``
# (readings no longer store ``tenant`` and ``device``; FerretDB used it for no read) and,
# on MongoDB, ``hk`` (the prefix of ``hk_ts`` serves its equalities).
OLD_TELEMETRY_BTREE = "tenant_device_ts"


# FerretDB 1.24 serves an ``_id`` equality from the table's primary key but answers
# ``_id $in`` by reading the whole collection (2.5 s for one id among 50,000 readings,
# against 29 ms for the equality). Up to this many ids are asked one equality each, so
# such a look-up costs what it asks for, not what the collection holds.
KEYED_LOOKUPS_MAX = 16


def find_by_ids(
    collection: Collection,
    ids: list[Any],
    projection: dict[str, int] | None = None,
    keyed_max: int | None = KEYED_LOOKUPS_MAX,
) -> list[dict[str, Any]]:
    """The documents of ``ids`` that exist (in no particular order).

    Up to ``keyed_max`` ids are asked one ``_id`` equality each; more in one ``_id $in``
    query, whose one scan of a small collection is then cheaper than many round trips.
    ``keyed_max`` None: always one equality each (a collection too big ever to scan).
    """
    if keyed_max is not None and len(ids) > keyed_max:
        return list(collection.find({"_id": {"$in": ids}}, projection))
    found = (collection.find_one({"_id": value}, projection) for value in dict.fromkeys(ids))
    return [doc for doc in found if doc is not None]


class AlreadyExists(Exception):
    """The tenant or device id is taken."""


def connect(settings: Settings, **client_options: Any) -> Database:
    """Open a client for ``settings.mongo_url`` and return its database (default ``fairway``)."""
    client: MongoClient = MongoClient(
        settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=5000, **client_options
    )
    return client.get_default_database(default="fairway")


def ensure_indexes(db: Database, postgres_url: str | None = None) -> None:
    """Create the indexes the pipeline and the API query by (idempotent).

    On FerretDB with PostgreSQL, also the GIN indexes of :data:`EQUALITY_FIELDS`, given
    ``postgres_url`` (default: ``FAIRWAY_POSTGRES_URL``; empty: none).
    """
    on_ferretdb = ferretdb.is_ferretdb(db)
    # FerretDB 1.24 served no read with tenant_device_ts (it pushes down only equalities,
    # which its btree indexes cannot match) and it cost every stored reading ~7 us of
    # server CPU (docs/benchmarks.md, "Database cost per reading"); on MongoDB it indexed
    # fields lean readings no longer have.
    _drop_index(db, TELEMETRY, OLD_TELEMETRY_BTREE)
    if not on_ferretdb:
        db[TELEMETRY].create_index([("hk", ASCENDING), ("ts", DESCENDING)], name=TELEMETRY_BTREE)
        _drop_index(db, TELEMETRY, "hk")  # made before hk_ts; its prefix serves the same
    db[DEVICES].create_index([("tenant", ASCENDING)], name="tenant")
    db[REJECTIONS].create_index([("device", ASCENDING), ("at", DESCENDING)], name="device_at")
    db[REJECTIONS].create_index([("tenant", ASCENDING), ("at", DESCENDING)], name="tenant_at")
    if not on_ferretdb:
        # The key reads (history, rollups, reports, retention) on MongoDB. FerretDB 1.24
        # never uses its own indexes for them, so there they would only cost writes; on
        # its PostgreSQL backend the GIN indexes below serve them instead.
        for collection, fields in EQUALITY_FIELDS.items():
            for field in fields:
                if field != "_id" and not (collection == TELEMETRY and field == "hk"):
                    db[collection].create_index([(field, ASCENDING)], name=field)
    if postgres_url is None:
        # Callers hold only a Database; the URL belongs to the deployment, not to them.
        postgres_url = Settings.from_env().postgres_url
    ferretdb.ensure_gin_indexes(db, postgres_url, EQUALITY_FIELDS)


def _drop_index(db: Database, collection: str, name: str) -> None:
    """Drop index ``name`` of ``collection`` if it exists (another process may drop it too)."""
    try:
        db[collection].drop_index(name)
    except OperationFailure as exc:
        if exc.code not in (INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND):
            raise
