"""The sink stores a device batch as one document per batch and hour, exactly once on
every path: a batch split across messages, a redelivery that accepted more of it, copies
in one write batch, a reading replayed alone before or after its batch, an hour boundary,
and the setting off. Against the services' FerretDB."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pymongo import MongoClient
from pymongo.database import Database

from fairway.kernel import batch_document
from fairway.kernel.settings import Settings
from fairway.storage import device_state, mongo
from scheduler import metrics
from scheduler.rollup_folder import RollupFolder
from scheduler.sink import MongoSink

T0 = datetime.now(UTC).replace(minute=10, second=0, microsecond=0) - timedelta(hours=2)


@pytest.fixture
def db(base_settings: Settings) -> Iterator[Database]:
    client: MongoClient = MongoClient(base_settings.mongo_url, tz_aware=True)
    name = f"t-{uuid.uuid4().hex[:10]}"
    database = client[name]
    mongo.ensure_indexes(database, None)
    try:
        yield database
    finally:
        client.drop_database(name)
        client.close()


def _sink(db: Database, batch_documents: bool = True) -> MongoSink:
    rollups = RollupFolder(db, start_thread=False)
    return MongoSink(db, device_state_flush_s=0, rollups=rollups, batch_documents=batch_documents)


@pytest.fixture
def sink(db: Database) -> Iterator[MongoSink]:
    made = _sink(db)
    yield made
    made.close()


def part(index: int, batch: str = "b1", minutes: float = 0.0, device: str = "d1") -> dict:
    ts = (T0 + timedelta(minutes=minutes or index)).timestamp()
    return {
        "device": device,
        "stream": "env",
        "id": f"{batch}#{index}",
        "ts": ts,
        "received": T0.timestamp() + 3600,
        "values": {"temp": 20.0 + index},
    }


def bundle(*parts: dict, tenant: str = "t1") -> bytes:
    return orjson.dumps({"tenant": tenant, "readings": list(parts)})


def stored(db: Database) -> Counter[str]:
    """Every stored reading id, with how many places hold it."""
    docs = db[mongo.TELEMETRY].find({})
    return Counter(r["_id"] for r in batch_document.each_reading(docs))


def ids(indexes: range | list[int], batch: str = "b1") -> Counter[str]:
    return Counter(f"t1:d1:{batch}#{i}" for i in indexes)


def test_a_batch_in_one_message_is_one_document(db: Database, sink: MongoSink) -> None:
    outcome = sink.write([bundle(*(part(i) for i in range(10)))])
    assert (outcome.stored, outcome.stored_each, outcome.duplicates) == (10, [10], [0])
    docs = list(db[mongo.TELEMETRY].find({}))
    assert len(docs) == 1 and docs[0]["ix"] == 0 and len(docs[0]["r"]) == 10
    assert docs[0]["ts"] == T0 + timedelta(minutes=9)  # the latest reading's
    reading = batch_document.readings(docs[0])[3]
    assert reading["_id"] == "t1:d1:b1#3"
    assert reading["values"] == {"temp": 23.0}
    assert reading["ts"] == T0 + timedelta(minutes=3)
    assert reading["w"] == sink.rollups.writer
    assert stored(db) == ids(range(10))


def test_a_batch_split_across_messages_is_stored_once(db: Database, sink: MongoSink) -> None:
    first = sink.write([bundle(*(part(i) for i in range(4)))])
    second = sink.write([bundle(*(part(i) for i in range(4, 10)))])
    assert first.stored_each == [4] and second.stored_each == [6]
    assert second.duplicates == [0]
    assert stored(db) == ids(range(10))  # the rest as documents of their own
    # in one write batch: both parts in one document
    db[mongo.TELEMETRY].delete_many({})
    both = sink.write([bundle(part(0), part(1)), bundle(part(2))])
    assert both.stored_each == [2, 1]
    assert db[mongo.TELEMETRY].count_documents({}) == 1
    assert stored(db) == ids(range(3))


def test_a_redelivery_that_accepted_more_stores_only_the_rest(
    db: Database, sink: MongoSink
) -> None:
    sink.write([bundle(*(part(i) for i in (0, 1, 2, 5)))])  # 3, 4 refused the first time
    again = sink.write([bundle(*(part(i) for i in range(6)))])
    assert again.stored_each == [2] and again.duplicates == [4]
    assert stored(db) == ids(range(6))
    third = sink.write([bundle(*(part(i) for i in range(6)))])
    assert third.stored_each == [0] and third.duplicates == [6]
    assert stored(db) == ids(range(6))


def test_copies_in_one_write_batch_are_duplicates(db: Database, sink: MongoSink) -> None:
    body = bundle(*(part(i) for i in range(5)))
    outcome = sink.write([body, body])
    assert outcome.stored_each == [5, 0] and outcome.duplicates == [0, 5]
    assert stored(db) == ids(range(5))
    # copies whose batch document is stored already, one reading new
    again = sink.write([bundle(part(5), part(0)), bundle(part(5))])
    assert sorted(again.stored_each) == [0, 1] and sum(again.duplicates) == 2
    assert stored(db) == ids(range(6))


def test_a_reading_replayed_alone_before_or_after_its_batch_is_stored_once(
    db: Database, sink: MongoSink
) -> None:
    # after: the replayed reading is found in the batch document
    sink.write([bundle(*(part(i) for i in range(3)))])
    replay = sink.write([bundle(part(1))])
    assert replay.stored_each == [0] and replay.duplicates == [1]
    # before: a one-reading batch document, then the batch stores the rest beside it
    sink.write([bundle(part(7, batch="b2"))])
    batch = sink.write([bundle(*(part(i, batch="b2") for i in range(10)))])
    assert batch.stored_each == [9] and batch.duplicates == [1]
    assert stored(db) == ids(range(3)) + ids(range(10), batch="b2")


def test_a_batch_over_an_hour_boundary_is_one_document_per_hour(
    db: Database, sink: MongoSink
) -> None:
    parts = [part(i, minutes=40 + 5 * i) for i in range(6)]  # T0 is :10; :50 to 1:15
    outcome = sink.write([bundle(*parts)])
    assert outcome.stored_each == [6]
    docs = sorted(db[mongo.TELEMETRY].find({}), key=lambda d: d["hk"])
    assert [d["ix"] for d in docs] == [0, 2]
    assert [len(d["r"]) for d in docs] == [2, 4]
    assert docs[0]["_id"].endswith(f"\u00a7{T0:%Y%m%d%H}")
    assert stored(db) == ids(range(6))


def test_readings_that_are_no_batch_elements_stay_documents_of_their_own(
    db: Database, sink: MongoSink
) -> None:
    single = dict(part(0), id="m-17")
    odd = dict(part(1), id="b1#01")  # not how the contract writes an index
    outcome = sink.write([bundle(single, odd, part(2))])
    assert outcome.stored_each == [3]
    doc_ids = sorted(d["_id"] for d in db[mongo.TELEMETRY].find({}, {"_id": 1}))
    assert doc_ids == ["t1:d1:b1#01", "t1:d1:b1\u00a7" + f"{T0:%Y%m%d%H}", "t1:d1:m-17"]


def test_with_the_setting_off_every_reading_is_a_document(db: Database) -> None:
    sink = _sink(db, batch_documents=False)
    try:
        outcome = sink.write([bundle(*(part(i) for i in range(4)))])
    finally:
        sink.close()
    assert outcome.stored_each == [4]
    assert db[mongo.TELEMETRY].count_documents({}) == 4
    assert stored(db) == ids(range(4))


def test_a_bad_reading_refuses_its_message_whole(db: Database, sink: MongoSink) -> None:
    bad = dict(part(1), ts="not a time")
    outcome = sink.write([bundle(part(0), bad), bundle(part(2))])
    assert outcome.refused == [0] and outcome.stored_each == [0, 1]
    assert stored(db) == ids([2])


def test_what_the_sink_hands_on_is_one_entry_per_batch_document(
    db: Database, sink: MongoSink
) -> None:
    outcome, written, duplicates, batches = sink.store([bundle(*(part(i) for i in range(3)))], "w1")
    assert not written and not duplicates and len(outcome.durable) == 3
    assert outcome.stored == 3 and outcome.stored_each == [3]
    [(tenant, device, stream, received, members)] = batches
    assert (tenant, device, stream) == ("t1", "d1", "env")
    assert received == T0 + timedelta(hours=1)
    assert [reading["id"] for _, reading, _ in members] == [f"b1#{i}" for i in range(3)]
    assert [ts for _, _, ts in members] == [T0 + timedelta(minutes=i) for i in range(3)]


def test_a_stored_batch_document_reaches_the_rollups_device_state_and_lag(
    db: Database, sink: MongoSink
) -> None:
    # The batch reaches its consumers only as a WrittenBatch entry (no per-reading view):
    # one dropped on the way, and its readings are missing from that consumer.
    tenant = f"t-{uuid.uuid4().hex[:8]}"  # its own row in the process-wide lag histogram
    sink.rollups._closed_upto = T0 - timedelta(hours=20)  # T0's hour still open: folded
    outcome = sink.write([bundle(*(part(i) for i in range(10)), tenant=tenant)])
    assert outcome.stored == 10 and db[mongo.TELEMETRY].count_documents({}) == 1

    hour = T0.replace(minute=0)
    assert list(sink.rollups._hours) == [hour]
    entry = sink.rollups._hours[hour][(tenant, "d1")]
    assert entry is not None and list(entry.streams) == ["env"]
    fold = entry.streams["env"]
    assert fold.n == 10 and fold.metrics["temp"]["n"] == 10
    assert fold.metrics["temp"]["sum"] == sum(20.0 + i for i in range(10))

    row = metrics.SCHED_LAG_SECONDS._rows[tenant]
    assert sum(row[:-2]) == 10  # bucket counts (then the sum and the created time)

    state = device_state.get(db, "d1")
    assert state is not None and state["tenant"] == tenant
    assert state["first_ts"] == T0 and state["last_ts"] == T0 + timedelta(minutes=9)
    assert state["latest"] == {
        "env": {"ts": T0 + timedelta(minutes=9), "id": "b1#9", "values": {"temp": 29.0}}
    }


def test_a_reading_the_database_refuses_fails_alone(db: Database, sink: MongoSink) -> None:
    bad = dict(part(1), values={"bad.name": 1.0})  # FerretDB refuses a "." in a field name
    outcome = sink.write([bundle(part(0), bad, part(2)), bundle(part(3))])
    assert outcome.refused == [0]  # the bad reading's message, dead-lettered whole
    assert outcome.stored_each == [2, 1]
    assert stored(db) == ids([0, 2, 3])  # its neighbours, in this message or not, stored


@pytest.mark.parametrize("missing", ["stream", "values", "device"])
def test_a_bundle_reading_without_a_field_is_refused_not_retried(
    db: Database, sink: MongoSink, missing: str
) -> None:
    broken = part(1)
    del broken[missing]
    outcome = sink.write([bundle(part(0), broken), bundle(part(2))])
    assert outcome.refused == [0] and outcome.stored_each == [0, 1]
    unhashable = dict(part(3), stream=["env"])
    assert sink.write([bundle(unhashable)]).refused == [0]


def test_readings_of_a_batch_document_known_stored_skip_the_failed_insert(
    db: Database, sink: MongoSink
) -> None:
    # A device whose own ids look like "seq#<n>": after the first, each reading is one
    # insert of its own document (no failed batch insert, no read).
    sink.write([bundle(part(0, batch="seq"))])
    found = metric("found_stored")
    known = metric("known_stored")
    for n in range(1, 6):
        assert sink.write([bundle(part(n, batch="seq"))]).stored_each == [1]
    assert metric("found_stored") == found
    assert metric("known_stored") == known + 5
    # a redelivery of what the document holds is still the database's duplicate
    again = sink.write([bundle(part(0, batch="seq"), part(3, batch="seq"))])
    assert again.duplicates == [2]
    assert stored(db) == ids(range(6), batch="seq")


def metric(outcome: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "fairway_scheduler_batch_documents_total", {"outcome": outcome}
    )
    return value or 0.0


def test_a_remembered_document_stored_again_by_another_process_is_read_not_trusted(
    db: Database, sink: MongoSink
) -> None:
    # This process stored b1 {0..4}; the document is deleted (its tenant deleted and
    # made again) and another process stores b1 {0..2}: readings 3 and 4, remembered
    # as held, are in no document and must be stored, not acked as duplicates.
    sink.write([bundle(*(part(i) for i in range(5)))])
    db[mongo.TELEMETRY].delete_many({})
    other = _sink(db)
    try:
        other.write([bundle(*(part(i) for i in range(3)))])
    finally:
        other.close()
    outcome = sink.write([bundle(*(part(i) for i in range(3, 10)))])
    assert outcome.stored_each == [7] and outcome.duplicates == [0]
    assert stored(db) == ids(range(10))
