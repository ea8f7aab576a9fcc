"""Isolation at the broker: byte bounds, the broker's own size limit, refusal budgets.

One device or tenant must not be able to fill a queue with a few huge messages, nor
crowd everyone else's refusals out of ``rejected`` (issue 10, item 3).
"""

from __future__ import annotations

import time

import orjson
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from fairway.kernel import topology
from tests.harness import FairwayProcess, Pipeline, reading, wait_for

BROKER_MAX_MESSAGE = 131072  # scripts/services.sh, deploy/, Ansible: max_message_size


def _refused(pipeline: Pipeline, reason: str) -> float:
    return pipeline.metric("relay", "fairway_relay_rejected_total", reason=reason)


def _over_budget(pipeline: Pipeline, tenant: str, reason: str) -> float:
    return pipeline.metric(
        "relay", "fairway_relay_rejected_over_budget_total", tenant=tenant, reason=reason
    )


@pytest.mark.settings(rejected_device_rate=0.5, rejected_device_burst=20)
def test_a_flooding_device_cannot_crowd_out_other_devices_refusals(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "noisy")
    pipeline.device("acme", "quiet")
    pipeline.start("relay")
    pipeline.start("scheduler")
    started = time.monotonic()
    flood = [("noisy.env", b"not json", {}) for _ in range(300)]
    pipeline.publish(flood + [("quiet.env", b"not json either", {}) for _ in range(5)])
    pipeline.publish([("quiet.env", reading(), {"message_id": f"ok-{i}"}) for i in range(3)])
    wait_for(
        lambda: (
            _refused(pipeline, "malformed_json") + _over_budget(pipeline, "acme", "malformed_json")
            == 305
        ),
        30,
        "every refusal counted",
    )
    elapsed = time.monotonic() - started
    kept = pipeline.rejected(25)
    devices = [h[topology.DEVICE_HEADER] for h, _ in kept]
    assert devices.count("quiet") == 5  # every one of the quiet device's refusals is kept
    assert 20 <= devices.count("noisy") <= 20 + 0.5 * elapsed + 1  # burst, then the rate
    assert _over_budget(pipeline, "acme", "malformed_json") == 300 - devices.count("noisy")
    pipeline.wait_stored(3, device="quiet")
    assert pipeline.depth(topology.INGEST) == 0  # over-budget refusals are acked, not stuck
    assert pipeline.alive("relay") and pipeline.alive("scheduler")


# Bundles of one reading: a full queue refuses reading by reading (bundles of many are
# refused whole, tested in test_bundles.py), so the counts below are exact.
@pytest.mark.settings(
    rejected_device_burst=10_000,
    rejected_tenant_rate=0.5,
    rejected_tenant_burst=30,
    bundle_max_readings=1,
)
def test_a_tenant_over_its_refusal_budget_keeps_only_its_budget(pipeline: Pipeline) -> None:
    pipeline.tenant("tiny", max_backlog=2)  # no scheduler: the queue stays full
    pipeline.tenant("other", max_backlog=2)
    for i in range(4):
        pipeline.device("tiny", f"tiny-{i}")
    pipeline.device("other", "other-1")
    pipeline.start("relay")
    started = time.monotonic()
    pipeline.publish(
        [(f"tiny-{i % 4}.env", reading(), {"message_id": f"t{i}"}) for i in range(202)]
        + [("other-1.env", reading(), {"message_id": f"o{i}"}) for i in range(7)]
    )
    reason = "tenant_backlog_full"
    wait_for(
        lambda: _refused(pipeline, reason) + _over_budget(pipeline, "tiny", reason) == 205,
        30,
        "every refusal counted",
    )
    elapsed = time.monotonic() - started
    kept = pipeline.rejected(35)
    tenants = [h[topology.TENANT_HEADER] for h, _ in kept]
    assert tenants.count("other") == 5  # another tenant's refusals are all kept
    assert 30 <= tenants.count("tiny") <= 30 + 0.5 * elapsed + 1
    assert _over_budget(pipeline, "tiny", reason) == 200 - tenants.count("tiny")
    assert pipeline.depth(topology.INGEST) == 0


# Broken messages are refused before the registry look-up; the tenant is the one whose
# ingest queue they came from, so many devices each within their own budget still share
# their tenant's.
@pytest.mark.settings(
    rejected_device_rate=0.001,
    rejected_device_burst=40,
    rejected_tenant_rate=0.5,
    rejected_tenant_burst=50,
)
def test_broken_messages_of_many_devices_share_their_tenants_refusal_budget(
    pipeline: Pipeline,
) -> None:
    pipeline.tenant("junk")
    pipeline.tenant("other")
    for i in range(5):
        pipeline.device("junk", f"junk-{i}")
    pipeline.device("other", "other-1")
    pipeline.start("relay")
    started = time.monotonic()
    pipeline.publish(
        [(f"junk-{i % 5}.env", b"{not json", {}) for i in range(200)]  # 40 per device
        + [("other-1.env", b"[1, 2", {}) for _ in range(5)]
    )
    reason = "malformed_json"
    wait_for(
        lambda: _refused(pipeline, reason) + _over_budget(pipeline, "junk", reason) == 205,
        30,
        "every refusal counted",
    )
    elapsed = time.monotonic() - started
    kept = pipeline.rejected(55)
    tenants = [h.get(topology.TENANT_HEADER) for h, _ in kept]
    assert tenants.count("other") == 5  # another tenant's refusals are all kept
    # Each device stayed within its burst of 40: only the tenant's budget refused them.
    assert 50 <= tenants.count("junk") <= 50 + 0.5 * elapsed + 1
    assert _over_budget(pipeline, "junk", reason) == 200 - tenants.count("junk")
    assert _over_budget(pipeline, "", reason) == 0
    assert pipeline.depth("ingest.junk") == 0


@pytest.mark.settings(tenant_max_backlog_bytes=8_000, bundle_max_readings=1)
def test_tenant_queue_is_bounded_in_bytes(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")  # the message bound (1,000,000) is far away
    pipeline.device("acme", "dev-1")
    arguments = pipeline.queue(topology.tenant_queue_name("acme"))["arguments"]
    assert arguments["x-max-length-bytes"] == 8_000
    pipeline.start("relay")
    big = {f"s{k}": "x" * 250 for k in range(4)}  # about 1 KiB per reading
    pipeline.publish([("dev-1.env", reading(**big), {"message_id": f"m{i}"}) for i in range(30)])
    wait_for(
        lambda: (
            pipeline.metric("relay", "fairway_relay_accepted_total", tenant="acme")
            + _refused(pipeline, "tenant_backlog_full")
            == 30
        ),
        30,
        "every reading settled",
    )
    queued = pipeline.depth(topology.tenant_queue_name("acme"))
    assert 1 <= queued <= 8  # what fits in 8,000 bytes; the rest was refused with its reason
    assert _refused(pipeline, "tenant_backlog_full") == 30 - queued
    for name in (topology.INGEST, topology.REJECTED):
        assert "x-max-length-bytes" in pipeline.queue(name)["arguments"]


def test_the_broker_refuses_a_body_over_its_maximum(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.start("relay")
    pipeline.start("scheduler")
    with (
        pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed,
        pipeline.channel() as channel,
    ):
        channel.confirm_delivery()
        channel.basic_publish(
            topology.TELEMETRY, "dev-1.env", b"x" * (BROKER_MAX_MESSAGE + 1), pika.BasicProperties()
        )
    assert closed.value.reply_code == 406  # PRECONDITION_FAILED: the message never entered
    assert pipeline.depth(topology.INGEST) == 0
    pipeline.publish([("dev-1.env", reading(), {"message_id": "after"})])
    pipeline.wait_stored(1, device="dev-1")


def _flood_raw(pipeline: Pipeline, routing_key: str, body: bytes, count: int) -> None:
    """Publish ``count`` messages fast (no confirms), as an attacker would."""
    with pipeline.channel() as channel:
        for _ in range(count):
            channel.basic_publish(topology.TELEMETRY, routing_key, body)


# Nearly every refusal is over budget; 100 units a second per ingest queue, a window of 20.
@pytest.mark.settings(
    rejected_device_rate=0.001,
    rejected_device_burst=1,
    relay_refused_pace=100,
    relay_tenant_prefetch=20,
)
def test_refusals_over_budget_are_acked_at_the_pace_and_others_are_not_held_up(
    pipeline: Pipeline,
) -> None:
    pipeline.tenant("evil")
    pipeline.device("evil", "evil-1")
    pipeline.tenant("quiet")
    pipeline.device("quiet", "quiet-1")
    flood = 800
    _flood_raw(pipeline, "evil-1.env", b"{not json", flood)
    wait_for(lambda: pipeline.depth("ingest.evil") >= flood, 30, "the flood queued")
    relay = pipeline.start("relay")
    started = time.monotonic()  # the relay refuses the flood from now, at its pace
    pipeline.start("scheduler")
    pipeline.publish([("quiet-1.env", reading(), {"message_id": f"q{i}"}) for i in range(5)])
    pipeline.wait_stored(5, timeout=15, tenant="quiet")
    # The quiet tenant was served while the flood waits in its own tenant's queue.
    assert pipeline.depth("ingest.evil") > flood // 4
    assert relay.metric("fairway_relay_refused_held") <= 20  # at most the window

    def counted() -> float:
        return _refused(pipeline, "malformed_json") + _over_budget(
            pipeline, "evil", "malformed_json"
        )

    wait_for(lambda: counted() == flood, 60, "every refusal counted")
    elapsed = time.monotonic() - started
    # A burst of 100, then 100 a second (each small body costs one unit); the last window
    # of 20 is counted as it arrives, before its acks are held. Unpaced, the relay takes
    # 800 small refusals in well under a second.
    assert elapsed >= (flood - 100 - 20) / 100 - 1, f"{flood} refused in {elapsed:.1f} s"
    assert relay.metric("fairway_relay_refused_paced_total", tenant="evil") > 0
    wait_for(lambda: pipeline.depth("ingest.evil") == 0, 30, "the flood handled")
    wait_for(lambda: relay.metric("fairway_relay_held") == 0, 30, "every delivery acked")
    assert relay.metric("fairway_relay_refused_held") == 0
    assert relay.alive()


# One writer, batches of 100 readings and a slow-ish database write for the backlog: the
# quiet tenant's readings go in express batches while the writer is busy.
@pytest.mark.settings(
    writers=1,
    batch_size=100,
    batch_max=100,
    express_readings=20,
    bundle_max_readings=10,
    device_rate=1e6,
    device_burst=1e6,
)
def test_a_light_tenant_is_written_in_express_batches_past_a_backlog(
    pipeline: Pipeline,
) -> None:
    _backlog(pipeline)
    with pipeline.channel() as channel:
        channel.confirm_delivery()
        scheduler = _busy_scheduler(pipeline, writers=1)
        for i in range(5):  # apart, each a bundle of its own: five chances to go express
            _publish_light(channel, i)
            time.sleep(0.03)  # apart, yet all within a drain of ~0.5 s (1.4-3 s loaded)
    # The scheduler's own counters, read in milliseconds: a count of telemetry by tenant
    # (an _id range, which FerretDB filters in Go) took longer than the backlog's drain.
    stored = "fairway_scheduler_stored_total"
    wait_for(lambda: scheduler.metric(stored, tenant="light") >= 5, 30, "light", interval=0.02)
    assert scheduler.metric(stored, tenant="heavy") < BACKLOG  # still writing the backlog
    pipeline.wait_stored(5, timeout=30, tenant="light")
    assert scheduler.metric("fairway_scheduler_express_batches_total") >= 1
    pipeline.wait_stored(BACKLOG, timeout=180, tenant="heavy")  # each stored once
    assert scheduler.metric("fairway_scheduler_express_inflight") == 0
    assert scheduler.alive()


BACKLOG = 10_000  # heavy's readings in its tenant queue before the scheduler starts


def _backlog(pipeline: Pipeline) -> None:
    """Tenants heavy (BACKLOG readings waiting in its tenant queue) and light, a relay."""
    pipeline.tenant("heavy")
    pipeline.device("heavy", "heavy-1")
    pipeline.tenant("light")
    pipeline.device("light", "light-1")
    pipeline.start("relay")
    with pipeline.channel() as channel:  # a backlog in tenant.heavy before the scheduler
        for i in range(BACKLOG):
            body = orjson.dumps({"ts": time.time(), "values": {"x": i}, "id": f"h{i}"})
            channel.basic_publish(topology.TELEMETRY, "heavy-1.env", body)
    wait_for(
        lambda: pipeline.metric("relay", "fairway_relay_accepted_total", tenant="heavy") == BACKLOG,
        120,
        "the backlog in tenant.heavy",
    )


def _publish_light(channel: BlockingChannel, i: int) -> None:
    """Reading ``l{i}`` of the light tenant's device, on a channel opened beforehand (a
    connection opened within the backlog's drain once took longer than the drain)."""
    props = pika.BasicProperties(delivery_mode=2, message_id=f"l{i}")
    channel.basic_publish(topology.TELEMETRY, "light-1.env", orjson.dumps(reading()), props)


def _busy_scheduler(pipeline: Pipeline, writers: int) -> FairwayProcess:
    """A scheduler busy on heavy's backlog with all its ``writers``."""
    scheduler = pipeline.start("scheduler")
    busy = "fairway_scheduler_inflight_batches"
    wait_for(lambda: scheduler.metric(busy) == writers, 30, "every writer busy")
    return scheduler


# Express priority on: two writers, one of them held back (and batches of 100 capped at
# 50) while the light tenant is active, and for half a second after each express write.
@pytest.mark.settings(
    writers=2,
    writers_beside_express=1,
    batch_beside_express=50,
    express_hold_ms=500,
    batch_size=100,
    batch_max=100,
    express_readings=20,
    bundle_max_readings=10,
    device_rate=1e6,
    device_burst=1e6,
)
def test_express_priority_holds_a_writer_back_while_a_light_tenant_is_active(
    pipeline: Pipeline,
) -> None:
    _backlog(pipeline)
    seen: set[tuple[float, float]] = set()  # (light active, regular writers allowed)
    with pipeline.channel() as channel:  # opened before the drain, as in the test above
        channel.confirm_delivery()
        scheduler = _busy_scheduler(pipeline, writers=2)
        for i in range(5):
            _publish_light(channel, i)
            for _ in range(5):
                seen.add(
                    (
                        scheduler.metric("fairway_scheduler_light_active"),
                        scheduler.metric("fairway_scheduler_writers_allowed"),
                    )
                )
                time.sleep(0.02)
    pipeline.wait_stored(5, timeout=30, tenant="light")
    assert scheduler.metric("fairway_scheduler_express_batches_total") >= 1
    assert (1.0, 1.0) in seen, seen  # one regular writer while the light tenant was active
    wait_for(lambda: scheduler.metric("fairway_scheduler_light_active") == 0, 10, "hold over")
    assert scheduler.metric("fairway_scheduler_writers_allowed") == 2
    pipeline.wait_stored(BACKLOG, timeout=180, tenant="heavy")  # each stored once
    assert scheduler.alive()
