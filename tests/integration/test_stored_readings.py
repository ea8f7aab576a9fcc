"""The tests' readers of ``telemetry`` (``tests.harness.stored_readings`` and friends)
read readings in both layouts: one document per reading, one per device batch and hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fairway.kernel import batch_document as bd
from fairway.kernel.contract import hour_key
from fairway.storage import mongo
from tests.harness import (
    Pipeline,
    duplicate_readings,
    reading_count,
    reading_query,
    stored_readings,
)

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def _single(tenant: str, device: str, message_id: str, ts: datetime, v: float) -> dict:
    return {
        "_id": f"{tenant}:{device}:{message_id}",
        "hk": hour_key(tenant, device, ts),
        "stream": "env",
        "ts": ts,
        "received": ts,
        "values": {"v": v},
    }


def _batch(tenant: str, device: str, batch_id: str, indexes: list[int]) -> dict:
    hk = hour_key(tenant, device, T0)
    elements = [(i, T0 + timedelta(seconds=i), {"v": float(i)}) for i in indexes]
    doc_id = bd.batch_document_id(tenant, device, batch_id, hk)
    return bd.batch_document(doc_id, hk, "env", T0, elements)


def _fill(pipeline: Pipeline) -> None:
    pipeline.db[mongo.TELEMETRY].insert_many(
        [
            _single("acme", "d1", "s1", T0, 100.0),
            _batch("acme", "d1", "b1", list(range(10))),
            _batch("acme", "d2", "b2", [0, 2, 3]),  # a list of indexes
            _single("zeta", "d1", "b9#0", T0, 7.0),  # a batch element stored on its own
        ]
    )


def test_readings_are_counted_and_read_in_both_layouts(pipeline: Pipeline) -> None:
    _fill(pipeline)
    db = pipeline.db
    assert db[mongo.TELEMETRY].count_documents({}) == 4
    assert reading_count(db) == 15
    assert reading_count(db, reading_query("acme", "d1")) == 11
    assert pipeline.stored(tenant="acme") == 14
    assert pipeline.stored(device="d2") == 3
    assert pipeline.stored(_id="acme:d1:b1#4") == 1
    assert pipeline.stored(_id="acme:d1:b1#10") == 0
    [one] = stored_readings(db, {"_id": "acme:d2:b2#2"})
    assert (one["ts"].replace(tzinfo=UTC), one["values"]) == (T0 + timedelta(seconds=2), {"v": 2})
    assert one["hk"] == hour_key("acme", "d2", T0) and one["stream"] == "env"
    ids = sorted(d["_id"] for d in stored_readings(db, reading_query("acme", "d2"), {"_id": 1}))
    assert ids == ["acme:d2:b2#0", "acme:d2:b2#2", "acme:d2:b2#3"]
    # Reading fields are matched on each reading, not on the batch document's.
    late = stored_readings(db, {"ts": {"$gte": T0 + timedelta(seconds=8)}}, {"values": 1})
    assert sorted(d["values"]["v"] for d in late) == [8, 9]
    assert reading_count(db, {"values.v": {"$gt": 50}}) == 1
    assert duplicate_readings(db) == {}
    # An _id range or pattern inside a batch is matched on each reading's id.
    assert reading_count(db, {"_id": {"$gte": "acme:d1:b1#5", "$lt": "acme:d1:b1#8"}}) == 3
    assert reading_count(db, {"_id": {"$regex": "#3$"}}) == 2  # b1#3, b2#3
    # A per-reading filter on a field the projection leaves out still reads it.
    assert len(stored_readings(db, {"ts": T0}, {"_id": 1})) == 4  # s1, b1#0, b2#0, b9#0
    with pytest.raises(ValueError, match=r"\$or"):
        stored_readings(db, {"$or": [{"stream": "env"}]})


def test_a_reading_stored_in_both_layouts_is_a_duplicate(pipeline: Pipeline) -> None:
    _fill(pipeline)
    pipeline.db[mongo.TELEMETRY].insert_many(
        [_single("acme", "d1", "b1#3", T0, 3.0), _batch("zeta", "d1", "b9", [0])]
    )
    assert duplicate_readings(pipeline.db) == {"acme:d1:b1#3": 2, "zeta:d1:b9#0": 2}
    assert reading_count(pipeline.db) == 17
