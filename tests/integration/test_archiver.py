"""The archiver keeps refused messages queryable per device, and trims per device."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import monitoring

from fairway.kernel import topology
from fairway.storage import mongo
from fairway.storage.rejections import list_rejections, trim
from tests.harness import Pipeline, reading, wait_for


def archived(pipeline: Pipeline, **query: object) -> int:
    return pipeline.db[mongo.REJECTIONS].count_documents(query)


@pytest.mark.settings(max_message_bytes=2048, rejected_body_bytes=64)
def test_refused_messages_are_archived_with_reason_codes_then_acked(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.start("relay")
    pipeline.start("archiver")
    pipeline.publish(
        [
            ("dev-1.env", b"{not json", {}),
            ("ghost.env", reading(), {}),
            ("dev-1.env", {"ts": time.time(), "values": {}}, {}),
            ("dev-1.env", b"x" * 5000, {}),
            ("no_stream", reading(), {}),
        ]
    )
    wait_for(lambda: archived(pipeline) == 5, 60, "5 archived rejections")
    wait_for(lambda: pipeline.depth(topology.REJECTED) == 0, 30, "rejected to be acked empty")
    docs = {d["reason"]: d for d in pipeline.db[mongo.REJECTIONS].find()}
    assert set(docs) == {
        "malformed_json",
        "unknown_device",
        "schema",
        "too_large",
        "bad_routing_key",
    }
    bad_json = docs["malformed_json"]
    assert (bad_json["device"], bad_json["tenant"]) == ("dev-1", "acme")
    assert bad_json["routing_key"] == "dev-1.env"
    assert bad_json["body"] == "{not json"
    assert "not JSON" in bad_json["detail"]
    assert abs(bad_json["at"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert docs["unknown_device"]["device"] == "ghost" and docs["unknown_device"]["tenant"] is None
    big = docs["too_large"]
    assert big["body"] == "x" * 64 and big["body_bytes"] == 5000 and big["tenant"] == "acme"
    assert docs["bad_routing_key"]["routing_key"] == "no_stream"

    # The store helper behind the API: tenant-scoped, newest first, paged by time.
    mine = list_rejections(pipeline.db, "acme")
    assert sorted(d["reason"] for d in mine) == ["malformed_json", "schema", "too_large"]
    assert [d["at"] for d in mine] == sorted((d["at"] for d in mine), reverse=True)
    assert all(isinstance(d["_id"], str) for d in mine)
    assert list_rejections(pipeline.db, "globex") == []
    assert len(list_rejections(pipeline.db, None)) == 5
    first = list_rejections(pipeline.db, "acme", "dev-1", limit=1)
    older = list_rejections(pipeline.db, "acme", "dev-1", limit=10, before=first[0]["at"])
    assert len(first) == 1 and len(older) == 2 and first[0]["_id"] not in {d["_id"] for d in older}
    assert pipeline.metric("archiver", "fairway_archiver_archived_total", reason="schema") == 1


@pytest.mark.settings(rejections_per_device=5, archiver_trim_interval_s=0.5)
def test_each_device_keeps_only_its_newest_rejections(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.device("acme", "dev-2")
    pipeline.start("relay")
    pipeline.start("archiver")
    pipeline.publish([("dev-1.env", f"bad {i}".encode(), {}) for i in range(12)])
    pipeline.publish([("dev-2.env", f"bad {i}".encode(), {}) for i in range(3)])
    wait_for(lambda: archived(pipeline, device="dev-2") == 3, 60, "dev-2's rejections")
    wait_for(lambda: archived(pipeline, device="dev-1") == 5, 60, "dev-1 trimmed to 5")
    kept = {d["body"] for d in pipeline.db[mongo.REJECTIONS].find({"device": "dev-1"})}
    assert kept == {f"bad {i}" for i in range(7, 12)}
    assert pipeline.metric("archiver", "fairway_archiver_trimmed_total") == 7
    # Later rejections keep the cap: the oldest go.
    pipeline.publish([("dev-1.env", b"bad 12", {})])
    wait_for(
        lambda: "bad 12" in {d["body"] for d in pipeline.db[mongo.REJECTIONS].find()},
        60,
        "the 13th rejection",
    )
    wait_for(lambda: archived(pipeline, device="dev-1") == 5, 60, "dev-1 trimmed again")
    assert archived(pipeline, device="dev-1", body="bad 7") == 0
    assert archived(pipeline, device="dev-2") == 3


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_trim_reads_the_collection_a_fixed_number_of_times_whatever_the_devices(
    pipeline: Pipeline,
) -> None:
    """FerretDB 1.24 scans without indexes: a read per device would make trim quadratic."""
    counter = CommandCounter()
    from pymongo import MongoClient

    client: MongoClient = MongoClient(
        pipeline.settings.mongo_url, tz_aware=True, event_listeners=[counter]
    )
    db = client.get_default_database()
    now = datetime.now(UTC)
    reads: dict[int, list[str]] = {}
    try:
        for devices in (3, 30):
            db[mongo.REJECTIONS].delete_many({})
            db[mongo.REJECTIONS].insert_many(
                [
                    {"device": f"d{d}", "at": now + timedelta(seconds=i), "n": i}
                    for d in range(devices)
                    for i in range(8)
                ]
            )
            counter.commands.clear()
            assert trim(db, None, keep=5) == devices * 3
            reads[devices] = [c for c in counter.commands if c in ("find", "aggregate")]
            assert sorted(db[mongo.REJECTIONS].distinct("n")) == [3, 4, 5, 6, 7]
            assert db[mongo.REJECTIONS].count_documents({}) == devices * 5
    finally:
        client.close()
    assert reads[3] == reads[30] == ["aggregate", "find"]
    # Over the cap, a device is trimmed below it (so not on every pass); at the cap, not.
    db = pipeline.db
    assert trim(db, None, keep=5, down_to=3) == 0
    db[mongo.REJECTIONS].insert_one({"device": "d0", "at": now + timedelta(seconds=99)})
    assert trim(db, None, keep=5, down_to=3) == 3
    assert db[mongo.REJECTIONS].count_documents({"device": "d0"}) == 3
