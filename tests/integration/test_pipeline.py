"""The ingest path end to end on the real broker and database."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from fairway.kernel import topology
from fairway.kernel.contract import Reading, tenant_message
from fairway.storage import mongo, registry
from tests.harness import Pipeline, management, reading, wait_for
from tests.integration.queue_types import BOTH, CLASSIC, QUORUM


@BOTH
def test_reading_is_stored_field_by_field(pipeline: Pipeline, queue_type: str) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.start("relay")
    pipeline.start("scheduler")
    ts = round(time.time() - 5, 3)
    body = {"ts": ts, "values": {"temp": 21.5, "door_open": False, "state": "ok", "n": 7}}
    before = time.time()
    pipeline.publish([("dev-1.env", body, {"message_id": "m-1"})])
    pipeline.wait_stored(1)

    doc = pipeline.db[mongo.TELEMETRY].find_one()
    received = doc.pop("received")
    writer = doc.pop("w")  # the scheduler process that stored it (rollup parts by writer)
    assert isinstance(writer, str) and len(writer) == 12
    assert doc == {
        "_id": "acme:dev-1:m-1",
        "hk": f"acme:dev-1:{datetime.fromtimestamp(ts, UTC):%Y%m%d%H}",
        "stream": "env",
        "ts": datetime.fromtimestamp(ts, UTC),
        "values": {"temp": 21.5, "door_open": False, "state": "ok", "n": 7},
    }
    assert before - 1 <= received.timestamp() <= time.time()

    # A redelivered or republished reading is a counted duplicate, not a second document.
    pipeline.publish([("dev-1.env", body, {"message_id": "m-1"})])
    wait_for(
        lambda: (
            pipeline.metric("scheduler", "fairway_scheduler_duplicates_total", tenant="acme") == 1
        ),
        30,
        "the duplicate to be counted",
    )
    assert pipeline.stored() == 1
    assert pipeline.metric("scheduler", "fairway_scheduler_stored_total", tenant="acme") == 1
    assert pipeline.metric("relay", "fairway_relay_accepted_total", tenant="acme") == 2
    for name in (topology.INGEST, topology.REJECTED, topology.tenant_queue_name("acme")):
        assert pipeline.queue(name)["type"] == queue_type


def test_message_id_falls_back_to_body_id_then_stream_and_ts(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.start("relay")
    pipeline.start("scheduler")
    now_ts = time.time()
    pipeline.publish(
        [
            ("dev-1.env", {"ts": now_ts, "id": "body-7", "values": {"a": 1}}, {}),
            ("dev-1.power", {"ts": now_ts, "values": {"a": 2}}, {}),
        ]
    )
    pipeline.wait_stored(2)
    ids = sorted(d["_id"] for d in pipeline.db[mongo.TELEMETRY].find({}, {"_id": 1}))
    assert ids == sorted(["acme:dev-1:body-7", f"acme:dev-1:power@{round(now_ts * 1000)}"])


@dataclass
class Case:
    """One class of bad input and what must happen to it."""

    reason: str
    messages: list[tuple[str, Any, dict[str, Any]]]
    setup: Callable[[Pipeline], None] = lambda p: None
    publish_as: tuple[str, str] = ("guest", "guest")
    scheduler: bool = True
    expected: int | None = None  # rejected count if not every message
    accepted: int = 0  # of the case's messages, those rightly accepted
    settings: dict[str, Any] = field(default_factory=dict)
    quorum: bool = False  # also run on quorum queues


def _disable(p: Pipeline) -> None:
    registry.set_device_enabled(p.db, "dev-1", False)


def _drop_tenant(p: Pipeline) -> None:
    p.tenant("gone")
    p.device("gone", "orphan")
    p.db[mongo.TENANTS].delete_one({"_id": "gone"})


def _device_user(p: Pipeline) -> None:
    management("PUT", "users/dev-1", {"password": "secret-1", "tags": ""})
    management("PUT", f"permissions/{p.name}/dev-1", {"configure": "", "write": ".*", "read": ""})


def _full_tenant(p: Pipeline) -> None:
    p.tenant("tiny", max_backlog=2)
    p.device("tiny", "tiny-1")


def _queueless_tenant(p: Pipeline) -> None:
    p.tenant("noq")
    p.device("noq", "noq-1")
    management("DELETE", f"queues/{p.name}/{topology.tenant_queue_name('noq')}")


CASES = [
    Case("too_large", [("dev-1.env", b'{"ts":1,"values":{"a":"' + b"x" * 70_000 + b'"}}', {})]),
    Case("malformed_json", [("dev-1.env", b"\xff\xfe\x00garbage", {})], quorum=True),
    Case("malformed_json", [("dev-1.env", b'{"ts": 1, "values": {"x": NaN}}', {})]),
    Case("schema", [("dev-1.env", {"ts": time.time(), "values": {"a": [1, 2]}}, {})]),
    Case("schema", [("dev-1.env", {"values": {"a": 1}}, {})]),
    Case("bad_routing_key", [("dev-1", reading(), {}), ("DEV-1.env", reading(), {})]),
    Case("unknown_device", [("ghost.env", reading(), {})]),
    Case("device_disabled", [("dev-1.env", reading(), {})], setup=_disable),
    Case("unknown_tenant", [("orphan.env", reading(), {})], setup=_drop_tenant),
    Case(
        "identity_mismatch",
        [("dev-2.env", reading(), {"user_id": "dev-1"})],
        setup=_device_user,
        publish_as=("dev-1", "secret-1"),
    ),
    Case("clock_skew", [("dev-1.env", reading(ts=time.time() + 3600), {})]),
    Case(
        "rate_limited",
        [("dev-1.env", reading(), {"message_id": f"r{i}"}) for i in range(6)],
        expected=4,
        accepted=2,
        settings={"device_rate": 0.01, "device_burst": 2},
    ),
    Case(
        "tenant_backlog_full",
        [("tiny-1.env", reading(), {"message_id": f"f{i}"}) for i in range(5)],
        setup=_full_tenant,
        scheduler=False,
        expected=3,
        accepted=2,
        # Bundles of one reading, so the count bound (2 messages) decides; bundles of
        # many refused by a full queue: test_bundles.py.
        settings={"bundle_max_readings": 1},
    ),
    Case(
        "unroutable",
        [("noq-1.env", reading(), {})],
        setup=_queueless_tenant,
        scheduler=False,
        quorum=True,
    ),
]
# Refused by the relay into a quorum ``rejected``; returned by the broker (no tenant queue).
CASES_BY_QUEUE_TYPE = [
    pytest.param(case, queue_type, id=f"{case.reason}-{queue_type}")
    for case in CASES
    for queue_type in (CLASSIC, QUORUM)
    if queue_type == CLASSIC or case.quorum
]


@pytest.mark.parametrize(("case", "queue_type"), CASES_BY_QUEUE_TYPE)
def test_bad_input_lands_in_rejected_with_its_reason(pipeline: Pipeline, case: Case) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.device("acme", "dev-2")
    pipeline.tenant("good")
    pipeline.device("good", "good-1")
    case.setup(pipeline)
    pipeline.start("relay", **case.settings)
    if case.scheduler:
        pipeline.start("scheduler")
    try:
        pipeline.publish(case.messages, *case.publish_as)
        expected = case.expected if case.expected is not None else len(case.messages)
        rejected = pipeline.rejected(expected)
    finally:
        if case.publish_as[0] != "guest":
            management("DELETE", f"users/{case.publish_as[0]}")

    assert len(rejected) == expected
    for headers, body in rejected:
        assert headers[topology.REASON_HEADER] == case.reason
        assert len(headers[topology.DETAIL_HEADER]) > 10
        assert body  # the original (or its first bytes) is kept for inspection
        if case.reason == "too_large":
            assert headers[topology.SIZE_HEADER] > 70_000
            assert len(body) == pipeline.settings.rejected_body_bytes

    # The pipeline keeps serving everybody else, and nothing refused was stored.
    if not case.scheduler:
        pipeline.start("scheduler")
    pipeline.publish([("good-1.env", reading(), {"message_id": "after"})])
    pipeline.wait_stored(1, tenant="good")
    pipeline.wait_stored(case.accepted + 1)
    assert pipeline.alive("relay")
    assert pipeline.metric("relay", "fairway_relay_rejected_total", reason=case.reason) == expected


def test_new_tenant_is_served_without_restart(pipeline: Pipeline) -> None:
    pipeline.tenant("first")
    pipeline.device("first", "f-1")
    pipeline.start("relay")
    pipeline.start("scheduler")
    pipeline.publish([("f-1.env", reading(), {})])
    pipeline.wait_stored(1)

    pipeline.tenant("second", weight=3)
    pipeline.device("second", "s-1")
    pipeline.publish([("s-1.env", reading(), {"message_id": f"m{i}"}) for i in range(10)])
    pipeline.wait_stored(10, tenant="second")
    assert pipeline.alive("scheduler")


def _hostile_batch(i: int) -> list[tuple[str, Any, dict[str, Any]]]:
    batch: list[tuple[str, Any, dict[str, Any]]] = [
        ("dev-1.env", os.urandom(256), {}),
        ("dev-1.env", b"[" * 100_000, {}),
        ("dev-1.env", b'{"ts": 1e400, "values": {"x": 1}}', {}),
        ("dev-1.env", b'{"ts": 1, "values": {"x": Infinity}}', {}),
        ("dev-1.env", {"ts": time.time(), "values": {"$where": "sleep(1000)"}}, {}),
        ("dev-1.env", b'{"ts": 1, "values": {"v": 1180591620717411303424}}', {}),
        ("dev-1.env", {"ts": time.time(), "values": dict.fromkeys(map(str, range(500)), 1)}, {}),
        ("dev-1.env", {"ts": time.time(), "values": {"a": 1}, "id": "x" * 1000}, {}),
        ("ghost.env", reading(), {}),
        ("orphan.env", reading(), {}),
        ("../../etc.passwd", reading(), {}),
        ("a" * 255, reading(), {}),
        ("", reading(), {}),
    ]
    if i % 20 == 0:
        # Over the contract, under the broker's own maximum (larger ones: test_isolation).
        batch.append(("dev-1.env", b"{" * 100_000, {}))
    return batch


# Every refusal is to be kept here: budgets far above the flood (test_isolation tests them).
@pytest.mark.settings(rejected_device_burst=1e9, rejected_tenant_burst=1e9)
def test_hostile_mix_leaves_every_consumer_running(pipeline: Pipeline) -> None:
    seconds = float(os.environ.get("FAIRWAY_TEST_HOSTILE_S", "60"))
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.tenant("good")
    pipeline.device("good", "good-1")
    _drop_tenant(pipeline)
    pipeline.start("relay")
    pipeline.start("scheduler")

    hostile, valid, i = Counter(), 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = _hostile_batch(i)
        batch.append(("good-1.env", reading(), {"message_id": f"ok-{i}"}))
        pipeline.publish(batch)
        hostile["total"] += len(batch) - 1
        valid += 1
        i += 1
        assert pipeline.alive("relay") and pipeline.alive("scheduler")

    pipeline.wait_stored(valid, tenant="good")
    rejected = pipeline.rejected(hostile["total"], timeout=60)
    assert len(rejected) == hostile["total"]
    reasons = Counter(h[topology.REASON_HEADER] for h, _ in rejected)
    assert set(reasons) == {
        "malformed_json",
        "schema",
        "unknown_device",
        "unknown_tenant",
        "bad_routing_key",
        "too_large",
        "clock_skew",
    }
    assert pipeline.stored(tenant="acme") == 0
    assert pipeline.alive("relay") and pipeline.alive("scheduler")
    assert pipeline.stop("relay") == 0
    assert pipeline.stop("scheduler") == 0


@BOTH
def test_messages_the_database_refuses_are_dead_lettered_not_stuck(pipeline: Pipeline) -> None:
    """A tenant-queue message that can never be stored must not wedge its queue."""
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.start("relay")
    pipeline.start("scheduler")
    refused_by_db = Reading("dev-1", "env", "dotted", time.time(), {"a.b": 1})  # FerretDB: no '.'
    with pipeline.channel() as channel:
        channel.confirm_delivery()
        for body in (tenant_message("acme", refused_by_db, time.time()), b"not relay output"):
            channel.basic_publish(topology.TENANTS, "acme", body)
    pipeline.publish([("dev-1.env", reading(), {"message_id": "fine"})])

    pipeline.wait_stored(1, tenant="acme")
    dead = pipeline.rejected(2)
    assert len(dead) == 2
    for headers, _body in dead:
        assert headers["x-death"][0]["queue"] == topology.tenant_queue_name("acme")
        assert headers["x-death"][0]["reason"] == "rejected"
    wait_for(
        lambda: (
            pipeline.metric("scheduler", "fairway_scheduler_dead_lettered_total", tenant="acme")
            == 2
        ),
        10,
        "dead letters to be counted",
    )
    assert pipeline.alive("scheduler")
