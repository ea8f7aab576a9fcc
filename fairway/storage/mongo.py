"""The MongoDB client, collection names and indexes.

Only features that both MongoDB (6+) and FerretDB 1.24 support are used.
Connections are passed in (a :class:`pymongo.database.Database`), never global.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.database import Database

from fairway.kernel.settings import Settings

TENANTS = "tenants"


DEVICES = "devices"


TELEMETRY = "telemetry"


REJECTIONS = "rejections"


DUPLICATE_KEY = 11000


class AlreadyExists(Exception):
    """The tenant or device id is taken."""


def connect(settings: Settings, **client_options: Any) -> Database:
    """Open a client for ``settings.mongo_url`` and return its database (default ``fairway``)."""
    client: MongoClient = MongoClient(
        settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=5000, **client_options
    )
    return client.get_default_database(default="fairway")


def ensure_indexes(db: Database) -> None:
    """Create the indexes the pipeline and the API query by (idempotent)."""
    db[TELEMETRY].create_index(
        [("tenant", ASCENDING), ("device", ASCENDING), ("ts", DESCENDING)], name="tenant_device_ts"
    )
    db[DEVICES].create_index([("tenant", ASCENDING)], name="tenant")
    db[REJECTIONS].create_index([("device", ASCENDING), ("at", DESCENDING)], name="device_at")
