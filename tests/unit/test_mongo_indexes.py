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
            if field != "_id" and collection != mongo.TELEMETRY:
                assert (collection, field) in db.created
    assert (mongo.ROLLUPS, "mk") in db.created
    # telemetry's hk equalities are served by the prefix of hk_ts: no index of its own
    assert (mongo.TELEMETRY, "hk_ts") in db.created
    assert (mongo.TELEMETRY, "hk") not in db.created


def test_ferretdb_gets_none_of_them() -> None:
    db = StubDatabase({"version": "7.0.42", "ferretdbVersion": "v1.24.2"})
    mongo.ensure_indexes(db, postgres_url="")  # type: ignore[arg-type]
    assert (mongo.TELEMETRY, "hk") not in db.created
    # No query on FerretDB uses a btree: none made, and the old one dropped where made.
    assert (mongo.TELEMETRY, "tenant_device_ts") not in db.created
    assert (mongo.TELEMETRY, "hk_ts") not in db.created
    assert (mongo.TELEMETRY, "drop tenant_device_ts") in db.created
    assert (mongo.TELEMETRY, "drop hk") not in db.created  # not a MongoDB index here


def test_mongodb_trades_the_tenant_device_btree_for_hk_ts() -> None:
    # Lean readings store tenant and device in _id only; every read is by hk (and ts).
    db = StubDatabase({"version": "7.0.0"})
    mongo.ensure_indexes(db, postgres_url="")  # type: ignore[arg-type]
    created = db.created
    assert (mongo.TELEMETRY, "tenant_device_ts") not in created
    assert (mongo.TELEMETRY, "drop tenant_device_ts") in created
    # hk_ts is made before the old hk index goes, so hk reads always have an index
    assert created.index((mongo.TELEMETRY, "hk_ts")) < created.index((mongo.TELEMETRY, "drop hk"))
