"""Which indexes ``mongo.ensure_indexes`` asks for on MongoDB and on FerretDB.

No MongoDB server runs here, so the server is a stub that records ``create_index``.
"""

from __future__ import annotations

from typing import Any

from fairway.storage import mongo


class StubCollection:
    def __init__(self, name: str, created: list[tuple[str, str]]) -> None:
        self.name, self.created = name, created

    def create_index(self, keys: list[tuple[str, int]], name: str) -> str:
        self.created.append((self.name, name))
        return name

    def drop_index(self, name: str) -> None:
        self.created.append((self.name, f"drop {name}"))


class StubDatabase:
    def __init__(self, build_info: dict[str, Any]) -> None:
        self.created: list[tuple[str, str]] = []
        admin = type("Admin", (), {"command": lambda _self, _c: build_info})()
        self.client = type("Client", (), {"admin": admin})()

    def __getitem__(self, name: str) -> StubCollection:
        return StubCollection(name, self.created)


def test_mongodb_gets_an_index_for_every_key_field() -> None:
    db = StubDatabase({"version": "7.0.0"})
    mongo.ensure_indexes(db, postgres_url="")  # type: ignore[arg-type]
    for collection, fields in mongo.EQUALITY_FIELDS.items():
        for field in fields:
            if field != "_id":
                assert (collection, field) in db.created
    assert (mongo.TELEMETRY, "hk") in db.created and (mongo.ROLLUPS, "mk") in db.created


def test_ferretdb_gets_none_of_them() -> None:
    db = StubDatabase({"version": "7.0.42", "ferretdbVersion": "v1.24.2"})
    mongo.ensure_indexes(db, postgres_url="")  # type: ignore[arg-type]
    assert (mongo.TELEMETRY, "hk") not in db.created
    # No query on FerretDB uses it: not made, and dropped where an older version made it.
    assert (mongo.TELEMETRY, "tenant_device_ts") not in db.created
    assert (mongo.TELEMETRY, "drop tenant_device_ts") in db.created


def test_mongodb_keeps_the_telemetry_btree() -> None:
    db = StubDatabase({"version": "7.0.0"})
    mongo.ensure_indexes(db, postgres_url="")  # type: ignore[arg-type]
    assert (mongo.TELEMETRY, "tenant_device_ts") in db.created
