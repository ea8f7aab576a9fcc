"""Bundles on the relay -> scheduler hop, on the real broker and database.

The relay republishes a tenant's accepted readings as bundles (many readings in one
message); the scheduler writes whole bundles and acks each once all its readings are
stored. A bundle a full tenant queue refuses puts each of its readings in ``rejected``.
Messages in the format before bundles, queued before an upgrade, are still stored, also
from a tenant queue declared by the earlier version.
"""

from __future__ import annotations

import time

import pika

from fairway.kernel import topology
from fairway.kernel.contract import (
    Reading,
    bundle_body,
    bundle_head,
    bundle_part,
    tenant_message,
)
from fairway.storage import mongo
from tests.harness import Pipeline, reading, wait_for

RELAY_BUNDLED = "fairway_relay_bundle_readings_sum"
RELAY_BUNDLES = "fairway_relay_bundle_readings_count"


def test_readings_travel_in_bundles_and_each_is_stored_once(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.tenant("beta")
    for device, tenant in (("a-1", "acme"), ("a-2", "acme"), ("b-1", "beta")):
        pipeline.device(tenant, device)
    pipeline.start("relay", bundle_linger_ms=50.0, bundle_max_readings=20)
    pipeline.start("scheduler")
    messages = [
        (f"{device}.env", reading(n=i), {"message_id": f"m{i}"})
        for i in range(300)
        for device in ("a-1", "a-2", "b-1")
    ]
    pipeline.publish(messages)
    pipeline.wait_stored(600, tenant="acme")
    pipeline.wait_stored(300, tenant="beta")
    relay = pipeline.procs["relay"]
    assert relay.metric_sum(RELAY_BUNDLED) == 900
    bundles = relay.metric_sum(RELAY_BUNDLES)
    assert bundles < 900 / 2, f"{bundles} bundles for 900 readings: hardly bundled"
    assert relay.metric("fairway_relay_bundle_flushes_total", cause="count") > 0
    # The scheduler's counters are in readings, and each reading is one document.
    scheduler = pipeline.procs["scheduler"]
    assert scheduler.metric("fairway_scheduler_stored_total", tenant="acme") == 600
    ids = {d["_id"] for d in pipeline.db[mongo.TELEMETRY].find({}, {"_id": 1})}
    assert len(ids) == 900 and "acme:a-2:m299" in ids

    # The broker saw a message per bundle, not per reading (its statistics lag ~5 s).
    def published() -> int:
        stats = pipeline.queue(topology.tenant_queue_name("acme")).get("message_stats", {})
        return int(stats.get("publish", 0))

    wait_for(lambda: published() > 0, 15, "the broker's statistics")
    assert published() < 600 / 2
    wait_for(lambda: pipeline.depth(topology.tenant_queue_name("acme")) == 0, 10, "acks")
    assert pipeline.stop("relay") == 0
    assert pipeline.stop("scheduler") == 0


def test_a_tenant_queue_is_bounded_in_bytes_by_its_cap_in_readings(pipeline: Pipeline) -> None:
    pipeline.tenant("capped", max_backlog=1000)
    arguments = pipeline.queue(topology.tenant_queue_name("capped"))["arguments"]
    per_reading = pipeline.settings.tenant_backlog_reading_bytes
    assert arguments["x-max-length-bytes"] == 1000 * per_reading
    assert arguments["x-max-length"] == 1000
    pipeline.tenant("big", max_backlog=10_000_000)  # 2.56 GB: the bound of every queue rules
    arguments = pipeline.queue(topology.tenant_queue_name("big"))["arguments"]
    assert arguments["x-max-length-bytes"] == pipeline.settings.tenant_max_backlog_bytes


def test_a_bundle_a_full_queue_refuses_puts_each_reading_in_rejected(pipeline: Pipeline) -> None:
    # A cap of 4 readings is 1,024 bytes: a bundle of 10 readings does not fit at all.
    pipeline.tenant("tiny", max_backlog=4)
    pipeline.device("tiny", "t-1")
    pipeline.start("relay", bundle_max_readings=10, bundle_linger_ms=200.0)
    batch = [reading(n=i) | {"id": f"r{i}"} for i in range(10)]
    pipeline.publish([("t-1.env", batch, {})])
    rejected = pipeline.rejected(10)
    assert len(rejected) == 10
    assert {h[topology.REASON_HEADER] for h, _ in rejected} == {"tenant_backlog_full"}
    assert sorted(h[topology.INDEX_HEADER] for h, _ in rejected) == list(range(10))
    assert {h[topology.TENANT_HEADER] for h, _ in rejected} == {"tiny"}
    relay = pipeline.procs["relay"]
    assert relay.metric("fairway_relay_rejected_total", reason="tenant_backlog_full") == 10
    assert pipeline.depth(topology.tenant_queue_name("tiny")) == 0
    # The device's message was acked once every refusal was confirmed.
    wait_for(lambda: relay.metric("fairway_relay_held") == 0, 15, "the original to be acked")
    assert pipeline.depth(topology.ingest_queue_name("tiny")) == 0
    # Readings that fit are still taken: one at a time, the cap holds about four.
    pipeline.stop("relay")
    pipeline.start("relay", bundle_max_readings=1)
    pipeline.publish([("t-1.env", reading(n=i), {"message_id": f"s{i}"}) for i in range(8)])
    wait_for(
        lambda: pipeline.depth(topology.REJECTED) + pipeline.depth("tenant.tiny") == 8,
        30,
        "every reading taken or refused",
    )
    assert 3 <= pipeline.depth(topology.tenant_queue_name("tiny")) <= 4


def test_messages_queued_before_the_upgrade_are_stored_next_to_bundles(
    pipeline: Pipeline,
) -> None:
    """One release reads both formats: a tenant queue declared by the earlier version
    (other arguments) holding single-reading messages, then bundles behind them."""
    pipeline.tenant("old")
    pipeline.device("old", "o-1")
    queue = topology.tenant_queue_name("old")
    now = time.time()
    with pipeline.channel() as channel:
        channel.queue_delete(queue)
        earlier = dict(topology.tenant_queue("old", 1000, pipeline.settings).arguments())
        earlier["x-max-length-bytes"] = 256 << 20  # as the earlier version declared it
        channel.queue_declare(queue, durable=True, arguments=earlier)
        channel.queue_bind(queue, topology.TENANTS, "old")
        channel.confirm_delivery()
        for i in range(20):
            body = tenant_message("old", Reading("o-1", "env", f"before{i}", now, {"n": i}), now)
            channel.basic_publish(topology.TENANTS, "old", body, pika.BasicProperties())
    pipeline.start("scheduler")
    pipeline.wait_stored(20, tenant="old")
    scheduler = pipeline.procs["scheduler"]
    assert scheduler.metric("fairway_scheduler_old_argument_queues") == 1
    pipeline.start("relay")
    pipeline.publish([("o-1.env", reading(n=i), {"message_id": f"after{i}"}) for i in range(30)])
    pipeline.wait_stored(50, tenant="old")
    assert scheduler.metric("fairway_scheduler_stored_total", tenant="old") == 50
    assert pipeline.depth(topology.REJECTED) == 0


def test_a_bundle_with_a_reading_the_database_refuses_is_dead_lettered_whole(
    pipeline: Pipeline,
) -> None:
    pipeline.tenant("acme")
    pipeline.start("scheduler")
    now = time.time()
    parts = [
        bundle_part(Reading("dev-1", "env", "fine", now, {"a": 1}), now),
        bundle_part(Reading("dev-1", "env", "dotted", now, {"a.b": 1}), now),  # FerretDB: no
    ]
    with pipeline.channel() as channel:
        channel.confirm_delivery()
        channel.basic_publish(
            topology.TENANTS,
            "acme",
            bundle_body(bundle_head("acme"), parts),
            pika.BasicProperties(headers={topology.READINGS_HEADER: 2}),
        )
    [(headers, body)] = pipeline.rejected(1)
    assert headers["x-death"][0]["queue"] == topology.tenant_queue_name("acme")
    assert b'"dotted"' in body and b'"fine"' in body  # the bundle, whole
    pipeline.wait_stored(1, tenant="acme")  # its other reading stays stored
    assert pipeline.depth(topology.tenant_queue_name("acme")) == 0
