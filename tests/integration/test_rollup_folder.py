"""The scheduler's in-memory rollups (scheduler/rollup_folder.py) on the real database:
folded parts equal a computation from the raw readings, and every reading the fold
cannot vouch for (a redelivery, late data, a lost writer, a spill) reaches the rollups
through the rollup task, exactly once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from prometheus_client import REGISTRY
from pymongo import MongoClient
from pymongo.database import Database

from fairway.kernel.settings import Settings
from fairway.storage import mongo, rollups
from fairway.storage.telemetry import HOUR, floor_hour
from scheduler.rollup_folder import RollupFolder
from scheduler.sink import MongoSink
from tasks import rollup
from tests.integration.rollup_figures import actual_rollups, expected_rollups, rounded

NOW = floor_hour(datetime.now(UTC))  # the open hour's start, set again for each test


@pytest.fixture(autouse=True)
def open_hour() -> None:
    """``NOW`` for this test, not too close to the hour's end (each test takes seconds)."""
    global NOW
    now = datetime.now(UTC)
    if closes(floor_hour(now)) - now < timedelta(seconds=20):
        time.sleep((closes(floor_hour(now)) - now).total_seconds() + 1)
    NOW = floor_hour(datetime.now(UTC))


@pytest.fixture
def db(base_settings: Settings) -> Iterator[Database]:
    """A fresh database on the services' server, with Fairway's indexes."""
    client: MongoClient = MongoClient(base_settings.mongo_url, tz_aware=True)
    name = f"t-rollups-{uuid.uuid4().hex[:8]}"
    try:
        mongo.ensure_indexes(client[name])
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


def bodies(hour: datetime, devices: int, per_device: int, tag: str = "m") -> list[bytes]:
    """Relay-output bodies spread over ``hour``: two streams, numeric and other values."""
    out = []
    for d in range(devices):
        for n in range(per_device):
            ts = hour + timedelta(seconds=(n * 3599 / per_device) + d)
            stream = "env" if n % 3 else "power"
            values = {"temp": n * 0.25 - d, "count": n, "ok": n % 2 == 0, "label": "x"}
            msg = {
                "tenant": "acme",
                "device": f"d{d}",
                "stream": stream,
                "id": f"{tag}{n}",
                "ts": ts.timestamp(),
                "received": ts.timestamp() + 0.5,
                "values": values,
            }
            out.append(orjson.dumps(msg))
    return out


def sink_with(db: Database, **folder: float) -> MongoSink:
    """A sink whose folder has no thread: the test moves its clock (``flush_due(now)``)."""
    return MongoSink(db, 0, RollupFolder(db, start_thread=False, **folder))  # type: ignore[arg-type]


def closes(hour: datetime, grace_s: float = 0) -> datetime:
    return hour + HOUR + timedelta(seconds=grace_s)


def test_folded_parts_equal_the_raw_readings_without_reading_them_back(db: Database) -> None:
    sink = sink_with(db, flush_grace_s=60)
    for start in range(0, 600, 100):
        assert sink.write(bodies(NOW, 4, 150)[start : start + 100]).stored == 100
    assert not list(db[mongo.ROLLUPS].find())  # the hour is open: nothing written yet
    assert not list(db[mongo.ROLLUP_PENDING].find())  # nor handed to the rollup task
    assert sink.rollups.flush_due(closes(NOW, 59)) == 0  # within the grace
    assert sink.rollups.flush_due(closes(NOW, 60)) == 8  # 4 devices x 2 streams
    assert rounded(actual_rollups(db)) == rounded(expected_rollups(db, closes(NOW)))
    assert not list(db[mongo.ROLLUP_TOUCHED].find())  # written: the records are gone
    assert all(r["_id"].endswith("/" + sink.rollups.writer) for r in db[mongo.ROLLUPS].find())
    # What the charts read: one part per device-stream-hour, merged like any other.
    series = rollups.hourly_series(db, "acme", "d1", "temp", NOW, NOW, now=closes(NOW, 61))
    want = expected_rollups(db, closes(NOW))
    n = sum(v["metrics"]["temp"]["n"] for k, v in want.items() if k.startswith("acme:d1:"))
    assert [(t, s["n"]) for t, s in series] == [(NOW, n)]


def open_cells(folder: RollupFolder) -> tuple[float, int]:
    """The folder's open-cells gauge, and the figures its open folds hold, counted again."""
    gauge = REGISTRY.get_sample_value("fairway_scheduler_rollup_open_cells")
    held = sum(
        e.count_cells() for folds in folder._hours.values() for e in folds.values() if e is not None
    )
    return gauge or 0.0, held


def test_the_open_cell_count_is_what_the_folds_hold(db: Database) -> None:
    # Counted as readings are folded (not recounted per batch): it must still equal the
    # folds' figures across devices, streams, minutes, a hand-over and a write.
    sink = sink_with(db, flush_grace_s=3600)
    batch = bodies(NOW - HOUR, 3, 40) + bodies(NOW, 2, 50, tag="n")
    for start in range(0, len(batch), 37):
        sink.write(batch[start : start + 37])
        gauge, held = open_cells(sink.rollups)
        assert gauge == held > 0
    sink.write(batch[:10])  # a redelivery: d0's previous hour handed over
    gauge, held = open_cells(sink.rollups)
    assert gauge == held > 0
    assert sink.rollups.flush_due(closes(NOW - HOUR, 3600)) == 4  # d1, d2: 2 streams each
    gauge, held = open_cells(sink.rollups)
    assert gauge == held > 0  # the open hour's folds only
    # temp and count per stream-hour and per minute; ok and label have no figures.
    assert held == sum(
        2 * (1 + len(minutes)) for minutes in _minutes_by_stream(batch, NOW).values()
    )


def _minutes_by_stream(batch: list[bytes], hour: datetime) -> dict[tuple[str, str], set[int]]:
    found: dict[tuple[str, str], set[int]] = {}
    for body in batch:
        msg = orjson.loads(body)
        ts = datetime.fromtimestamp(msg["ts"], UTC)
        if floor_hour(ts) == hour:
            found.setdefault((msg["device"], msg["stream"]), set()).add(ts.minute)
    return found


def test_redelivered_and_late_readings_are_recomputed_exactly_once(db: Database) -> None:
    hour = NOW - HOUR  # closed by the clock, still folded within the folder's grace
    sink = sink_with(db, flush_grace_s=3600)
    due = closes(hour, 3600)
    batch = bodies(hour, 3, 40)
    assert sink.write(batch[:60]).stored == 60  # d0 and half of d1
    # A redelivery (the scheduler lost its channel before acking): the devices with
    # duplicates are handed to the rollup task, d2 stays folded.
    again = sink.write(batch[30:])
    assert (again.stored, sum(again.duplicates)) == (60, 30)  # readings, by message
    marks = {m["device"] for m in db[mongo.ROLLUP_PENDING].find()}
    assert marks == {"d0", "d1"}  # the duplicates: d0's last 10 and d1's first 20
    assert sink.rollups.flush_due(due) == 2  # d2's two streams
    assert rollup.roll_closed_hours(db, 0, now=due)["computed"] == 2
    assert rounded(actual_rollups(db)) == rounded(expected_rollups(db, closes(hour)))
    # A late reading of a written part: marked, recomputed, the part replaced (larger n).
    late = bodies(hour, 3, 40, tag="late")[85:86]
    assert sink.write(late).stored == 1
    assert rollup.roll_closed_hours(db, 0, now=due)["computed"] == 1
    assert rounded(actual_rollups(db)) == rounded(expected_rollups(db, closes(hour)))
    assert sum(r["n"] for r in actual_rollups(db).values()) == 121


def test_a_lost_writer_is_recovered_from_its_records(db: Database) -> None:
    lost = sink_with(db, flush_grace_s=0)
    assert lost.write(bodies(NOW, 2, 50)).stored == 100  # then kill -9: nothing written
    records = list(db[mongo.ROLLUP_TOUCHED].find())
    assert {d for r in records for d in r["devices"]} == {"d0", "d1"}
    other = sink_with(db, flush_grace_s=0)  # the next scheduler, same hour, its own part
    assert other.write(bodies(NOW, 3, 50, tag="o")).stored == 150
    # Within the lease nothing is recovered; after it, the lost writer's hours are.
    soon = rollup.roll_closed_hours(db, 0, lease_s=300, now=datetime.now(UTC))
    assert (soon["lost_writers"], soon["recovered_hours"], soon["computed"]) == (0, 0, 0)
    other.rollups.flush_due(closes(NOW))
    found = rollup.roll_closed_hours(db, 0, lease_s=300, now=closes(NOW, 301))
    assert found["recovered_hours"] == 2 and found["computed"] == 2
    assert rounded(actual_rollups(db)) == rounded(expected_rollups(db, closes(NOW)))
    parts = {r["_id"].split("/")[1] for r in db[mongo.ROLLUPS].find({"device": "d0"})}
    assert parts == {lost.rollups.writer, other.rollups.writer}


def test_a_clean_close_writes_closed_hours_and_leaves_open_ones_to_the_task(
    db: Database,
) -> None:
    sink = sink_with(db)
    before = NOW - HOUR
    assert sink.write(bodies(before, 1, 10) + bodies(NOW, 1, 10, tag="n")).stored == 20
    sink.close()  # the previous hour is due at close only if its grace passed: not here
    assert not list(db[mongo.ROLLUPS].find({"hour": NOW}))
    done = rollup.roll_closed_hours(db, 0, now=closes(NOW, 1))
    assert done["lost_writers"] == 1 and done["recovered_hours"] >= 1
    assert rounded(actual_rollups(db)) == rounded(expected_rollups(db, closes(NOW)))


def test_over_the_memory_bound_the_oldest_hour_is_handed_over(db: Database) -> None:
    sink = sink_with(db, max_cells=200, flush_grace_s=3600)  # the previous hour still open
    assert sink.write(bodies(NOW - HOUR, 2, 30)).stored == 60
    assert sink.write(bodies(NOW, 2, 30, tag="n")).stored == 60
    spilled = {(m["device"], m["hour"]) for m in db[mongo.ROLLUP_PENDING].find()}
    assert (("d0", NOW - HOUR) in spilled) and all(h == NOW - HOUR for _, h in spilled)
    assert sink.write(bodies(NOW - HOUR, 2, 30, tag="x")).stored == 60  # still the task's
    assert sink.rollups.flush_due(closes(NOW, 3600)) == 4  # the open hour's parts
    assert rollup.roll_closed_hours(db, 0, now=closes(NOW, 3600))["computed"] == 2
    assert rounded(actual_rollups(db)) == rounded(expected_rollups(db, closes(NOW)))
