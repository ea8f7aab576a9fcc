"""GIN expression indexes that FerretDB's PostgreSQL backend needs and cannot create.

FerretDB 1.24 on PostgreSQL pushes a top-level equality (``{"device": "d1"}``) down
to SQL as ``_jsonb->'device' @> '"d1"'``. The btree indexes FerretDB creates for
``create_index`` never match that expression; a GIN index on ``(_jsonb->'device')``
does. This module creates those indexes directly in PostgreSQL, on the table that
backs each collection (found in FerretDB's ``_ferretdb_database_metadata`` table of
the database's schema), and does nothing on MongoDB or FerretDB on SQLite.

The plans only use them if PostgreSQL plans FerretDB's prepared statements with
their values: ``scripts/services.sh`` sets ``plan_cache_mode = force_custom_plan``
on the database before FerretDB starts (a warning is logged when it is not set).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from pymongo.database import Database
from pymongo.errors import CollectionInvalid, OperationFailure

log = logging.getLogger(__name__)

METADATA_TABLE = "_ferretdb_database_metadata"
# Storage parameters of every GIN index made here: a pending list (``fastupdate``) bounded
# to PostgreSQL's smallest, 64 kB. Without a pending list (``fastupdate = off``) each insert
# rewrites its key's whole posting list while it is stored inline (up to ~2 KB: the first
# hundreds of readings of each device-hour's ``hk``), which cost ~20 us of PostgreSQL CPU
# per stored reading and 40 % of the WAL (benchmarks/pg_settings.py, docs/benchmarks.md);
# the pending list merges many new entries per key at once. With PostgreSQL's default
# limit (4 MB) every equality read scans up to 4 MB of unmerged entries, which doubled
# the keyed reads' cost (benchmarks/reads.py); 64 kB kept them at the cost without one.
GIN_OPTIONS: dict[str, str] = {"fastupdate": "on", "gin_pending_list_limit": "64"}

NAMESPACE_EXISTS = 48


def is_ferretdb(db: Database) -> bool:
    """True if ``db`` is served by FerretDB (any backend) rather than MongoDB."""
    return "ferretdbVersion" in db.client.admin.command("buildInfo")


def is_ferretdb_postgresql(db: Database, collection: str) -> bool:
    """True if ``db`` is served by FerretDB on PostgreSQL (``collection`` must exist).

    FerretDB's ``buildInfo`` names its version but not its backend; its ``explain``
    returns the backend's own plan: a PostgreSQL plan tree (a document) or SQLite's
    ``EXPLAIN QUERY PLAN`` lines (a list).
    """
    try:
        if not is_ferretdb(db):
            return False
        explained = db.command("explain", {"find": collection, "filter": {}, "limit": 1})
    except OperationFailure:
        return False
    plan = explained.get("queryPlanner", {}).get("Plan")
    return isinstance(plan, Mapping) and "Node Type" in plan


def index_name(table: str, field: str) -> str:
    """The GIN index's name: PostgreSQL keeps 63 bytes of a name."""
    return f"{table}_{field}_gin"[:63]


def quote(identifier: str) -> str:
    """An SQL identifier in double quotes (schema names here contain ``-``)."""
    return '"' + identifier.replace('"', '""') + '"'


def backing_tables(connection: Any, schema: str) -> dict[str, str]:
    """Collection name -> PostgreSQL table, from FerretDB's metadata in ``schema``."""
    found = connection.execute(
        "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s", (schema, METADATA_TABLE)
    ).fetchone()
    if found is None:
        return {}
    rows = connection.execute(
        f"SELECT _jsonb->>'_id', _jsonb->>'table' FROM {quote(schema)}.{quote(METADATA_TABLE)}"
    ).fetchall()
    return {collection: table for collection, table in rows}


def ensure_gin_indexes(
    db: Database, postgres_url: str, fields: Mapping[str, Sequence[str]]
) -> list[str]:
    """Create ``USING gin ((_jsonb->'<field>'))`` for each collection's ``fields`` (dropping
    those this module made for fields no longer listed), then ANALYZE.

    Idempotent, and a no-op (returning ``[]``) when ``postgres_url`` is empty or ``db``
    is not FerretDB on PostgreSQL (told by its plan for one of ``fields``' collections
    that exists). Missing collections are created, so their indexes exist before they
    hold data. Returns the names of the indexes in place.
    """
    if not postgres_url:
        return []
    existing = set(db.list_collection_names())
    probe = next((c for c in fields if c in existing), None)
    if probe is None or not is_ferretdb_postgresql(db, probe):
        return []
    for collection in fields:
        if collection not in existing:
            try:
                db.create_collection(collection)
            except CollectionInvalid:
                pass  # created by another process just now
            except OperationFailure as exc:
                if exc.code != NAMESPACE_EXISTS:
                    raise
    # Imported here: only processes on FerretDB with PostgreSQL need the driver.
    import psycopg

    names: list[str] = []
    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=10) as connection:
        mode = connection.execute("SHOW plan_cache_mode").fetchone()
        if mode is not None and mode[0] != "force_custom_plan":
            log.warning(
                "plan_cache_mode is %s: FerretDB's prepared statements may ignore the GIN "
                "indexes; run ALTER DATABASE ... SET plan_cache_mode = force_custom_plan",
                mode[0],
            )
        tables = backing_tables(connection, db.name)
        for collection, collection_fields in fields.items():
            table = tables.get(collection)
            if table is None:
                log.warning(
                    "no PostgreSQL table for %s.%s; GIN indexes skipped", db.name, collection
                )
                continue
            target = f"{quote(db.name)}.{quote(table)}"
            for field in collection_fields:
                name = index_name(table, field)
                literal = field.replace("'", "''")
                # Another process may create it between the check and the insert.
                with suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                    connection.execute(
                        f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {target} "
                        f"USING gin ((_jsonb->'{literal}')) {_with_options()}"
                    )
                _set_options(connection, db.name, name)
                names.append(name)
            _drop_unlisted(
                connection, db.name, table, {index_name(table, f) for f in collection_fields}
            )
            connection.execute(f"ANALYZE {target}")
    return names


def _with_options() -> str:
    if not GIN_OPTIONS:
        return ""
    return "WITH (" + ", ".join(f"{k} = {v}" for k, v in GIN_OPTIONS.items()) + ")"


def _set_options(connection: Any, schema: str, name: str) -> None:
    """Bring an index made earlier to :data:`GIN_OPTIONS` and merge its pending list (left
    alone, a list made under other options stays until the next VACUUM: one made with
    ``fastupdate = on`` and the 4 MB default, or any when ``fastupdate`` is turned off)."""
    row = connection.execute(
        "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    ).fetchone()
    if row is None:
        return
    have = dict(option.split("=", 1) for option in row[0] or ())
    if all(have.get(k) == v for k, v in GIN_OPTIONS.items()):
        return
    index = f"{quote(schema)}.{quote(name)}"
    log.info("GIN index %s: setting %s", name, GIN_OPTIONS)
    connection.execute(f"ALTER INDEX {index} SET ({_with_options()[6:-1]})")
    connection.execute("SELECT gin_clean_pending_list(%s::regclass)", (index,))


def _drop_unlisted(connection: Any, schema: str, table: str, wanted: set[str]) -> None:
    """Drop the GIN indexes this module made on ``table`` for fields no longer listed:
    every index costs each insert, and an index no query uses is only that cost."""
    rows = connection.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
        (schema, table),
    ).fetchall()
    for name, definition in rows:
        ours = name.startswith(f"{table}_") and name.endswith("_gin") and "USING gin" in definition
        if ours and name not in wanted:
            log.info("dropping GIN index %s: no query uses its field any more", name)
            connection.execute(f"DROP INDEX IF EXISTS {quote(schema)}.{quote(name)}")
