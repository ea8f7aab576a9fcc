"""Day documents (fairway/storage/rollup_days.py) on the real database: they equal an
independent computation from the raw readings after the scheduler's fold, redelivered
and late readings, and retention; a month chart reads them and gives the same figures
as the hourly documents; compaction waits for hours still pending or held by a writer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pymongo import MongoClient
from pymongo.database import Database

from fairway.kernel.contract import split_reading_id
from fairway.kernel.settings import Settings
from fairway.storage import mongo, rollup_days, rollups
from fairway.storage.telemetry import HOUR
from scheduler.rollup_folder import RollupFolder
from scheduler.sink import MongoSink
from tasks import rollup
from tests.harness import reading_query

DAY = timedelta(days=1)
# Three whole UTC days, well in the past (the sink takes them for late data).
FIRST = datetime(2026, 3, 30, tzinfo=UTC)
DAYS = [FIRST + i * DAY for i in range(3)]
AFTER = DAYS[-1] + DAY + rollup_days.COMPACT_AFTER  # every day compactable
DEVICES = ("d0", "d1", "d2")


@pytest.fixture
def db(base_settings: Settings) -> Iterator[Database]:
    """A fresh database on the services' server, with Fairway's indexes, one tenant."""
    client: MongoClient = MongoClient(base_settings.mongo_url, tz_aware=True)
    name = f"t-rdays-{uuid.uuid4().hex[:8]}"
    try:
        db = client[name]
        mongo.ensure_indexes(db)
        db[mongo.TENANTS].insert_one({"_id": "acme"})
        db[mongo.DEVICES].insert_many([{"_id": d, "tenant": "acme"} for d in DEVICES])
        yield db
    finally:
        client.drop_database(name)
        client.close()


def bodies(tag: str, every_min: int = 37, devices: tuple[str, ...] = DEVICES) -> list[bytes]:
    """Readings every ``every_min`` minutes over :data:`DAYS`, two streams, int and float
    values, a bool and a string (no figures); spread over the month boundary."""
    out = []
    for d, device in enumerate(devices):
        t, n = FIRST + timedelta(minutes=d), 0
        while t < DAYS[-1] + DAY:
            stream = "env" if n % 3 else "power"
            values = {"temp": n * 0.25 - d, "count": n, "ok": n % 2 == 0, "label": "x"}
            msg = {
                "tenant": "acme",
                "device": device,
                "stream": stream,
                "id": f"{tag}{n}",
                "ts": t.timestamp(),
                "received": t.timestamp() + 0.5,
                "values": values,
            }
            out.append(orjson.dumps(msg))
            t += timedelta(minutes=every_min)
            n += 1
    return out


def write(db: Database, batch: list[bytes]) -> None:
    """Through the scheduler's sink (past hours: marked for the rollup task), then the
    device state the sink's flusher would write."""
    sink = MongoSink(db, 0, RollupFolder(db, start_thread=False))
    for start in range(0, len(batch), 200):
        sink.write(batch[start : start + 200])
    sink.close()


def expected_days(db: Database) -> dict[str, dict[str, Any]]:
    """From the raw readings: per day document id, ``n`` and per metric per hour figures."""
    out: dict[str, dict[str, Any]] = {}
    for doc in db[mongo.TELEMETRY].find():
        day = rollup_days.floor_day(doc["ts"])
        tenant, device, _ = split_reading_id(doc["_id"])
        key = rollup_days.day_id(tenant, device, doc["stream"], day)
        entry = out.setdefault(key, {"n": 0, "metrics": {}})
        entry["n"] += 1
        for metric, value in doc["values"].items():
            if type(value) in (int, float):
                hours = entry["metrics"].setdefault(metric, {})
                s = hours.setdefault(
                    doc["ts"].hour, {"n": 0, "min": value, "max": value, "sum": 0.0}
                )
                s["n"] += 1
                s["min"], s["max"] = min(s["min"], value), max(s["max"], value)
                s["sum"] = round(s["sum"] + value, 9)
    return out


def actual_days(db: Database) -> dict[str, dict[str, Any]]:
    out = {}
    for doc in db[mongo.ROLLUP_DAYS].find():
        metrics = {}
        for metric, blob in doc["metrics"].items():
            metrics[metric] = {
                h: {**s, "sum": round(s["sum"], 9)} for h, s in rollup_days.unpack(blob)
            }
        out[doc["_id"]] = {"n": doc["n"], "metrics": metrics}
    return out


def series_from_raw(
    db: Database, device: str, metric: str, stream: str | None
) -> list[tuple[datetime, dict[str, Any]]]:
    merged: dict[datetime, dict[str, Any]] = {}
    query: dict[str, Any] = reading_query(device=device)
    if stream:
        query["stream"] = stream
    for doc in db[mongo.TELEMETRY].find(query):
        value = doc["values"].get(metric)
        if type(value) not in (int, float):
            continue
        hour = doc["ts"].replace(minute=0, second=0, microsecond=0)
        s = merged.setdefault(hour, {"n": 0, "min": value, "max": value, "sum": 0.0})
        s["n"] += 1
        s["min"], s["max"] = min(s["min"], value), max(s["max"], value)
        s["sum"] += value
    return sorted(merged.items())


def rounded(series: list[tuple[datetime, dict[str, Any]]]) -> list[tuple[datetime, Any]]:
    return [(t, (s["n"], s["min"], s["max"], round(s["sum"], 9))) for t, s in series]


def chart(db: Database, device: str, stream: str | None = None) -> list[tuple[datetime, Any]]:
    series = rollups.hourly_series(
        db, "acme", device, "temp", FIRST - DAY, AFTER, stream, now=AFTER
    )
    return rounded(series)


def test_day_documents_equal_the_raw_readings_and_serve_the_chart(db: Database) -> None:
    write(db, bodies("m"))
    result = rollup.roll_closed_hours(db, 0, now=AFTER)
    assert result["computed"] == 3 * 24 * len(DEVICES)  # every hour was late: recomputed
    assert result["days_migrated"] == 3 and result["days_compacted"] == 0
    assert actual_days(db) == expected_days(db)
    found = rollup_days.window(db, "acme")
    assert found is not None and found.migrated
    assert all(found.holds(day) for day in DAYS)
    # The chart now reads the day documents (the hourly ones are no longer read for
    # these days: removed here to prove it) and gives the same figures.
    db[mongo.ROLLUPS].delete_many({"device": "d1"})
    assert chart(db, "d1") == rounded(series_from_raw(db, "d1", "temp", None))
    assert chart(db, "d1", "env") == rounded(series_from_raw(db, "d1", "temp", "env"))
    assert chart(db, "d1", "power") == rounded(series_from_raw(db, "d1", "temp", "power"))
    # Idempotent: another run changes nothing.
    again = rollup.roll_closed_hours(db, 0, now=AFTER)
    assert (again["computed"], again["days_compacted"], again["days_migrated"]) == (0, 0, 0)


def test_redelivered_and_late_readings_are_compacted_again_exactly_once(db: Database) -> None:
    batch = bodies("m")
    write(db, batch)
    rollup.roll_closed_hours(db, 0, now=AFTER)
    # A redelivery of half the readings (duplicates) and late readings in compacted days.
    write(db, batch[: len(batch) // 2] + bodies("late", every_min=611, devices=("d2",)))
    assert db[mongo.ROLLUP_PENDING].count_documents({}) > 0
    result = rollup.roll_closed_hours(db, 0, now=AFTER)
    assert result["computed"] > 0 and result["days_compacted"] == 0
    assert actual_days(db) == expected_days(db)
    assert chart(db, "d2") == rounded(series_from_raw(db, "d2", "temp", None))


def test_a_compaction_that_read_fewer_readings_never_replaces_one_that_read_more(
    db: Database,
) -> None:
    write(db, bodies("m"))
    rollup.roll_closed_hours(db, 0, now=AFTER)
    want = actual_days(db)
    parts = list(db[mongo.ROLLUPS].find({"dk": rollups.day_key("acme", "d0", DAYS[1])}))
    stale = rollup_days.day_documents("acme", "d0", DAYS[1], parts[: len(parts) // 2])
    rollups.store_newer(db[mongo.ROLLUP_DAYS], stale)  # a slow, racing compaction
    assert actual_days(db) == want


def test_compaction_waits_for_pending_hours_and_writers_records(db: Database) -> None:
    write(db, bodies("m"))
    # Day 0 closed 2 h ago: its hours are computed, then compacted (migrated: the window
    # starts after it); the later hours are still pending, which blocks day 1.
    first = rollup.roll_closed_hours(db, 0, now=DAYS[1] + rollup_days.COMPACT_AFTER)
    assert (first["days_compacted"], first["days_migrated"]) == (0, 1)
    found = rollup_days.window(db, "acme")
    assert found is not None and (found.start, found.end) == (DAYS[0], DAYS[1])
    # A writer still holds an hour of day 1 (its parts not written): day 1 must wait.
    record = {"_id": "r1", "w": "x", "hour": DAYS[1] + 5 * HOUR, "at": DAYS[1]}
    db[mongo.ROLLUP_TOUCHED].insert_one({**record, "tenants": ["acme"], "devices": ["d0"]})
    db[mongo.ROLLUP_WRITERS].insert_one({"_id": "x", "beat": AFTER, "closed": False})
    waited = rollup.roll_closed_hours(db, 0, now=AFTER)
    assert waited["computed"] > 0 and waited["days_compacted"] == 0
    db[mongo.ROLLUP_TOUCHED].delete_one({"_id": "r1"})
    done = rollup.roll_closed_hours(db, 0, now=AFTER)
    assert done["days_compacted"] == 2
    assert actual_days(db) == expected_days(db)


def test_retention_keeps_day_documents_equal_to_what_is_left(db: Database) -> None:
    write(db, bodies("m"))
    rollup.roll_closed_hours(db, 0, now=AFTER)
    cut = DAYS[1] + 7 * HOUR + timedelta(minutes=20)  # mid-hour of a compacted day
    for device in DEVICES:
        db[mongo.TELEMETRY].delete_many(reading_query("acme", device, ts={"$lt": cut}))
        rollups.delete_day_before(db, "acme", device, DAYS[0], DAYS[1])
        rollups.delete_day_before(db, "acme", device, DAYS[1], cut.replace(minute=0))
        rollups.recompute_hour(db, "acme", device, cut.replace(minute=0))
    assert actual_days(db) == expected_days(db)
    assert chart(db, "d0") == rounded(series_from_raw(db, "d0", "temp", None))
