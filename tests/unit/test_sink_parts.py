"""The MongoDB sink takes each written reading's tenant, device and message id once
(scheduler/sink.py) and hands them to its three consumers: the rollup folder, the
device state fold and the lag metric. Each must get the parts the document's ``_id``
holds, the same parts for the same document, and fold what a database reader would."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import pytest

from fairway.kernel.contract import (
    Reading,
    Written,
    bundle_body,
    bundle_head,
    bundle_part,
    reading_id,
    split_reading_id,
)
from fairway.storage import device_state
from scheduler import metrics
from tests.unit.test_scheduler_bundles import mongo_sink
from tests.unit.test_scheduler_settle import FakeCollection


def bundle(tenant: str, device: str, *ids: str) -> bytes:
    now = time.time()
    parts = [bundle_part(Reading(device, "env", m, now, {"t": len(m)}), now) for m in ids]
    return bundle_body(bundle_head(tenant), parts)


def by_id(written: Iterable[Written]) -> dict[str, tuple[str, str, str]]:
    return {doc["_id"]: key for key, doc in written}


def test_the_three_consumers_get_the_parts_of_each_documents_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # message ids holding ':' (tenant and device ids never do): _id splits at the first two
    dup = reading_id("acme", "dev-2", "x:2")
    collection = FakeCollection(duplicate={dup})
    sink = mongo_sink(collection)
    seen: dict[str, Any] = {}
    record, fold_written = sink.rollups.record, device_state.fold_written

    def rollups(stored: list[Written], duplicates: list[Written], batches: Any = ()) -> None:
        seen["rollups"], seen["rollup_duplicates"] = list(stored), list(duplicates)
        assert not batches  # no reading here is a device batch's
        record(stored, duplicates, batches)

    def state(written: Iterable[Written]) -> dict[str, device_state.DeviceDelta]:
        seen["state"] = list(written)
        return fold_written(seen["state"])

    def lag(observations: Iterable[tuple[str, float]]) -> None:
        seen["lag"] = [tenant for tenant, _ in observations]

    monkeypatch.setattr(sink.rollups, "record", rollups)
    monkeypatch.setattr(device_state, "fold_written", state)
    monkeypatch.setattr(metrics.SCHED_LAG_SECONDS, "observe_many", lag)
    try:
        outcome = sink.write(
            [
                bundle("acme", "dev-1", "a:1", "b"),
                bundle("globex", "dev-1", "c:1:2"),
                bundle("acme", "dev-2", "x:2", "y"),
            ]
        )
    finally:
        sink.close()

    assert outcome.stored == 4 and outcome.duplicates == [0, 0, 1]
    stored = by_id(seen["rollups"])
    assert sorted(stored) == sorted(collection.stored)
    assert by_id(seen["rollup_duplicates"]) == {dup: ("acme", "dev-2", "x:2")}
    for doc_id, key in {**stored, dup: by_id(seen["rollup_duplicates"])[dup]}.items():
        assert key == split_reading_id(doc_id)
    # the device state: stored and duplicates, the same parts the rollup folder got
    assert by_id(seen["state"]) == {**stored, dup: ("acme", "dev-2", "x:2")}
    # the lag metric: each stored reading's tenant, in the order the folder got them
    assert (
        seen["lag"]
        == [key[0] for key, _ in seen["rollups"]]
        == [
            "acme",
            "acme",
            "globex",
            "acme",
        ]
    )
    # and they fold what a reader of the same documents from the database folds
    docs = [doc for _, doc in seen["state"]]
    assert fold_written(seen["state"]) == device_state.fold(docs)
