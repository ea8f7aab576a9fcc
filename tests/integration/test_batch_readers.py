"""Every reader of ``telemetry`` reads both layouts, on the real database.

One device's readings are stored partly one document each and partly in device-batch
documents (:mod:`fairway.kernel.batch_document`): a batch spanning an hour edge (two
documents), one with indexes not consecutive (``ix`` a list), one sharing a timestamp
with a reading stored alone, and a batch element stored alone (as before batch
documents). History (paging, filters, cursors), raw series, rollups (per writer, and
the live fold), reports, summaries and exports, retention, the replay status and the
demo's figures must each give exactly the readings, as if each were stored alone.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from pymongo.database import Database

from fairway.devtools import demo
from fairway.domain import replay
from fairway.domain.job_params import ExportParams, ReportParams
from fairway.kernel.batch_document import batch_document, batch_document_id
from fairway.kernel.contract import hour_key, split_reading_id
from fairway.kernel.settings import Settings
from fairway.kernel.times import iso_z
from fairway.storage import device_state, mongo, rollups
from fairway.storage.telemetry import HistoryQuery, raw_series, read_history
from tasks import export, retention
from tasks.report import build_report
from tests.integration.rollup_figures import actual_rollups, rollups_of, rounded
from web.api_devices import _cursor, _reading_json

T, D = "a", "d1"
H0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)
S = timedelta(seconds=1)
RECEIVED = H0 + 2 * H


def reading(mid: str, stream: str, ts: datetime, n: int, writer: str) -> dict[str, Any]:
    """A reading as history returns it (the truth the stores are built from)."""
    values = {"v": n, "x": f"s{n}"}  # x: not numeric, never folded
    return {"_id": f"{T}:{D}:{mid}", "stream": stream, "ts": ts, "received": RECEIVED,
            "values": values, "w": writer}  # fmt: skip


ALONE = [
    reading(f"s{k:02d}", "env" if k % 2 else "power", H0 + k * timedelta(minutes=13), k, "w1")
    for k in range(10)  # H0 .. H0+1h57m
] + [reading("b4#0", "env", H0 + H + 30 * S, 40, "w1")]  # a batch element stored alone
BATCHES = {  # batch id -> stream, [(index, ts)]
    "b1": ("env", [(i, H0 + H - 5 * S + i * S) for i in range(10)]),  # over the hour edge
    "b2": ("power", [(i, H0 + H + 10 * 60 * S + i * S) for i in (0, 2, 3)]),  # ix a list
    "b3": ("env", [(i, ALONE[2]["ts"] + i * S) for i in range(4)]),  # b3#0 ties with s02
}
IN_BATCHES = [
    reading(f"{bid}#{i}", stream, ts, 100 + 10 * b + i, "w2")
    for b, (bid, (stream, elements)) in enumerate(BATCHES.items())
    for i, ts in elements
]
TRUTH = ALONE + IN_BATCHES


def stored_documents() -> list[dict[str, Any]]:
    """What the sink stores for :data:`TRUTH`: a document per reading of ``ALONE``, one
    per batch and hour for the rest."""
    docs = [{**r, "hk": hour_key(T, D, r["ts"])} for r in ALONE]
    for bid, (stream, _) in BATCHES.items():
        by_hour: dict[str, list[tuple[int, datetime, dict[str, Any]]]] = {}
        for r in IN_BATCHES:
            if r["_id"].startswith(f"{T}:{D}:{bid}#"):
                index = int(r["_id"].rpartition("#")[2])
                by_hour.setdefault(hour_key(T, D, r["ts"]), []).append(
                    (index, r["ts"], r["values"])
                )
        for hk, elements in by_hour.items():
            doc = batch_document(batch_document_id(T, D, bid, hk), hk, stream, RECEIVED, elements)
            docs.append({**doc, "w": "w2"})
    return docs


@pytest.fixture
def db(base_settings: Settings) -> Iterator[Database]:
    """A fresh database holding :data:`TRUTH` in both layouts, and the device's state."""
    client: MongoClient = MongoClient(base_settings.mongo_url, tz_aware=True)
    name = f"t-batch-readers-{uuid.uuid4().hex[:8]}"
    try:
        database = client[name]
        mongo.ensure_indexes(database)
        docs = stored_documents()
        assert len(docs) == len(ALONE) + 4  # b1 in two hours, b2, b3
        database[mongo.TELEMETRY].insert_many(docs)
        device_state.apply(database, device_state.fold(TRUTH))
        yield database
    finally:
        client.drop_database(name)
        client.close()


def newest_first(readings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(readings, key=lambda r: (r["ts"], r["_id"]), reverse=True)


def as_read(r: dict[str, Any]) -> dict[str, Any]:
    """A reading as history returns it (without ``tenant``/``hk``)."""
    return {k: r[k] for k in ("_id", "stream", "ts", "received", "values", "w")}


def walk(db: Database, limit: int, **filters: Any) -> list[dict[str, Any]]:
    """Every page of the device's history, the cursor passed through its API text."""
    docs: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = read_history(db, HistoryQuery(T, D, limit, cursor=cursor, **filters))
        assert len(page.docs) <= limit
        docs += page.docs
        if page.next_cursor is None:
            return docs
        cursor = _cursor(page.next_cursor.encode())


EDGE = (H0 + H - 3 * S, H0 + H + 10 * 60 * S + 2 * S)  # cuts b1 in both hours, and b2


@pytest.mark.parametrize(
    "filters",
    [{}, {"stream": "env"}, {"stream": "power"}, {"start": EDGE[0], "end": EDGE[1]}],
    ids=["all", "env", "power", "from-to"],
)
def test_history_pages_through_both_layouts_exactly_once(db: Database, filters: Any) -> None:
    stream, start, end = filters.get("stream"), filters.get("start"), filters.get("end")
    want = newest_first(
        [
            r
            for r in TRUTH
            if (stream is None or r["stream"] == stream)
            and (start is None or start <= r["ts"] <= end)
        ]
    )
    assert want
    for limit in (1, 2, 3, 5, 100):
        got = walk(db, limit, **filters)
        assert [d["_id"] for d in got] == [r["_id"] for r in want], limit
        assert [as_read(d) for d in got] == [as_read(r) for r in want]
        assert not {"r", "ix", "hk"} & {k for d in got for k in d}
    api = [_reading_json(d)["id"] for d in walk(db, 100)]
    assert api == [split_reading_id(r["_id"])[2] for r in newest_first(TRUTH)]


def test_raw_series_keeps_each_batch_reading_by_its_own_time(db: Database) -> None:
    start, end = EDGE
    got = raw_series(db, T, D, "v", start, end)
    want = sorted((r["ts"], r["values"]["v"]) for r in TRUTH if start <= r["ts"] <= end)
    assert got == want and len(got) > 5
    env = raw_series(db, T, D, "v", H0, H0 + 2 * H, stream="env")
    assert env == sorted((r["ts"], r["values"]["v"]) for r in TRUTH if r["stream"] == "env")


def test_rollups_fold_batch_readings_into_their_writers_parts(db: Database) -> None:
    for hour in (H0, H0 + H):
        rollups.compute_hour(db, T, D, hour)
    assert rounded(actual_rollups(db)) == rounded(rollups_of(TRUTH, H0 + 2 * H))
    per_writer: dict[str, int] = {}
    for part in db[mongo.ROLLUPS].find():
        per_writer[part["w"]] = per_writer.get(part["w"], 0) + part["n"]
    assert per_writer == {"w1": len(ALONE), "w2": len(IN_BATCHES)}


def stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values), "max": max(values), "sum": sum(values)}


def test_the_live_fold_reads_batch_documents(db: Database) -> None:
    now = H0 + H + 30 * 60 * S  # H0 and H0+1h are live: folded from the raw readings
    got = rollups.hourly_series(db, T, D, "v", H0, now, now=now)
    want = [
        (hour, stats([r["values"]["v"] for r in TRUTH if hour <= r["ts"] < hour + H]))
        for hour in (H0, H0 + H)
    ]
    assert [(h, {k: s[k] for k in ("n", "min", "max", "sum")}) for h, s in got] == want
    cut = EDGE[0]
    folds = rollups.fold_stored_hour(db, T, D, H0, "env", keep=lambda d: d["ts"] >= cut)
    assert folds["env"].n == sum(
        1 for r in TRUTH if cut <= r["ts"] < H0 + H and r["stream"] == "env"
    )


def test_reports_and_exports_read_each_batch_reading_by_its_own_time(db: Database) -> None:
    rollups.mark_pending(db, [(T, D, H0), (T, D, H0 + H)])  # read from the raw readings
    start, end = H0 + 59 * 60 * S, H0 + H + 11 * 60 * S  # whole minutes, cutting batches
    inside = [r for r in TRUTH if start <= r["ts"] < end]
    assert {r["_id"].rpartition(":")[2].partition("#")[0] for r in inside} >= {"b1", "b2"}
    later = H0 + 5 * H

    def report(detail: str) -> dict[str, Any]:
        params = ReportParams(D, start.timestamp(), end.timestamp(), 60, 2.5, detail)
        return build_report(db, T, params, 10_000, lambda done, total: None, now=later)

    for detail in ("full", "summary"):
        got = report(detail)
        v = got["metrics"]["v"]
        values = [r["values"]["v"] for r in inside]
        assert (v["count"], v["min"], v["max"]) == (len(values), min(values), max(values)), detail
        buckets = {b["start"]: b["count"] for b in v["buckets"]}
        want: dict[str, int] = {}
        for r in inside:
            key = iso_z(r["ts"].replace(second=0, microsecond=0))
            want[key] = want.get(key, 0) + 1
        assert buckets == want, detail

    params = ExportParams(D, start.timestamp(), end.timestamp())
    result = export.export_csv(db, "job1", T, params, 10_000, lambda d, t: None, now=later)
    assert result["readings"] == len(inside)
    rows = list(csv.DictReader(io.StringIO(export.open_file(db, "job1").read().decode())))
    got_v = sorted((row["ts"], row["stream"], row["value"]) for row in rows if row["metric"] == "v")
    want_v = sorted((iso_z(r["ts"]), r["stream"], str(r["values"]["v"])) for r in inside)
    assert got_v == want_v


def test_retention_deletes_a_batch_document_only_when_all_its_readings_expired(
    db: Database,
) -> None:
    cutoff = H0 + H - 3 * S  # b1's first hour straddles it; b3 is wholly before it
    deleted = retention.delete_hour(db, hour_key(T, D, H0), before=cutoff)
    gone = [r for r in ALONE if H0 <= r["ts"] < cutoff]
    assert deleted == len(gone) + 1  # documents: the readings alone, and b3's one
    left = {d["_id"] for d in db[mongo.TELEMETRY].find({"hk": hour_key(T, D, H0)})}
    assert left == {r["_id"] for r in ALONE if H0 <= r["ts"] < H0 + H and r["ts"] >= cutoff} | {
        batch_document_id(T, D, "b1", hour_key(T, D, H0))
    }
    history = {d["_id"] for d in walk(db, 100)}
    b1_before = {
        r["_id"] for r in IN_BATCHES if r["_id"].startswith("a:d1:b1#") and r["ts"] < cutoff
    }
    assert b1_before and b1_before <= history  # kept: never deleted early
    assert not {r["_id"] for r in IN_BATCHES if "b3#" in r["_id"]} & history
    # A later cutoff past every reading of the hour deletes the straddling batch too.
    assert retention.delete_hour(db, hour_key(T, D, H0), before=H0 + H) == len(left)


def test_a_retention_run_counts_documents_a_batch_document_once(db: Database) -> None:
    db[mongo.TENANTS].insert_one({"_id": T, "retention_days": 1})
    now = H0 + 2 * H + timedelta(days=1)  # the cutoff past every reading: all go
    result = retention.expire_readings(db, 30, now, 100, lambda done, total: None)
    assert db[mongo.TELEMETRY].count_documents({}) == 0
    # A document per reading alone, one per batch and hour: not the readings they held.
    assert result["documents_deleted"] == {T: len(ALONE) + 4}
    assert len(ALONE) + 4 < len(TRUTH)


class Finds(monitoring.CommandListener):
    """The ``find`` commands sent to ``telemetry``."""

    def __init__(self) -> None:
        self.filters: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command["find"] == mongo.TELEMETRY:
            self.filters.append(dict(event.command.get("filter") or {}))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def replay_status(db: Database, readings: list[tuple[str, float]]) -> tuple[dict[str, Any], int]:
    """The status of a rejection whose replay expects ``readings`` (reading id, epoch s),
    its mark stored and read back as the ledger does; and the telemetry finds it sent."""
    mark = {"at": RECEIVED, "by": "op", **replay.mark_places(readings)}
    rid = db[mongo.REJECTIONS].insert_one({"device": D, "body": "x", "replay": mark}).inserted_id
    doc = db[mongo.REJECTIONS].find_one({"_id": rid})
    assert doc is not None and db.client.address is not None
    finds = Finds()
    host, port = db.client.address
    client: MongoClient = MongoClient(host, port, tz_aware=True, event_listeners=[finds])
    try:
        status = replay.status(client[db.name], doc, {D: []})
    finally:
        client.close()
    assert status is not None
    return status, len(finds.filters)


def expected(mids: list[str]) -> list[tuple[str, float]]:
    by_id = {r["_id"]: r for r in TRUTH}
    out = []
    for mid in mids:
        rid = f"{T}:{D}:{mid}"
        ts = by_id[rid]["ts"] if rid in by_id else H0 + H + 30 * 60 * S
        out.append((rid, ts.timestamp()))
    return out


def test_replay_status_finds_readings_in_batch_documents_and_alone(db: Database) -> None:
    b1 = [f"b1#{i}" for i in range(10)]
    status, finds = replay_status(db, expected(b1))
    assert (status["state"], status["stored"], len(status["readings"])) == ("stored", 10, 10)
    assert finds == 2  # the batch's two documents (one per hour), nothing by reading id
    # b2 stored 0, 2, 3: index 1 (ix a list) is not stored; b4#0 was stored alone.
    status, finds = replay_status(db, expected(["b2#0", "b2#1", "b2#2", "b4#0", "s03"]))
    assert (status["state"], status["stored"]) == ("stored", 4)
    assert finds == 2 + 1 + 1 + 1  # b2's and b4's documents, then b2#1, b4#0, s03 by id
    status, _ = replay_status(db, expected(["b9#0", "b9#1"]))
    assert status["state"] == "pending"


def test_the_demo_counts_and_shows_readings_in_both_layouts(db: Database) -> None:
    assert demo._counts(db, {T: [D]}) == {T: len(TRUTH)}
    latest = demo.latest_readings(db, 3)
    want = newest_first(TRUTH)[:3]
    assert [(d["_id"], d["ts"], d["values"]) for d in latest] == [
        (r["_id"], r["ts"], r["values"]) for r in want
    ]
