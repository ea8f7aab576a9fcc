"""The pipeline on quorum queues (``FAIRWAY_QUEUE_TYPE=quorum``), the cluster setting.

Quorum queues refuse a channel-wide prefetch, so the scheduler changes a tenant's
share by recycling its consumer (``scheduler/tenant_channel.py``). These tests check
what only quorum queues do (a soft ``x-max-length``) and that shares are really
re-shared as backlogs change (on both queue types: the recycling path is the only one).
The key pipeline, crash and drain tests run on both queue types in their own modules
(``queue_types.BOTH``).
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from fairway.kernel import topology
from fairway.kernel.contract import Reading, split_reading_id, tenant_message
from tests.harness import Pipeline, reading, wait_for
from tests.integration.queue_types import BOTH, CLASSIC

QUORUM = pytest.mark.settings(queue_type="quorum")


def _redelivered(pipeline: Pipeline, tenants: list[str]) -> int:
    """Deliveries the broker marked redelivered on the tenant queues (management stats)."""
    return sum(
        pipeline.queue(topology.tenant_queue_name(t)).get("message_stats", {}).get("redeliver", 0)
        for t in tenants
    )


@QUORUM
def test_quorum_full_tenant_queue_refuses_publishes_and_loses_nothing(
    pipeline: Pipeline,
) -> None:
    """``reject-publish`` on a quorum queue: a soft bound, every publish accounted for.

    A quorum queue accepts the publishes in flight when it crosses ``x-max-length``
    and refuses the rest until it is below 80 % of it, so the exact split is not
    fixed; what is: refused ones land in ``rejected`` as ``tenant_backlog_full``,
    accepted ones are all stored, and the two add up.
    """
    sent, bound = 40, 5
    pipeline.tenant("tiny", max_backlog=bound)
    pipeline.device("tiny", "tiny-1")
    pipeline.start("relay", bundle_max_readings=1)  # one reading a message: counts exact

    def settled(count: int) -> bool:
        accepted = pipeline.metric("relay", "fairway_relay_accepted_total", tenant="tiny")
        refused = pipeline.metric(
            "relay", "fairway_relay_rejected_total", reason="tenant_backlog_full"
        )
        return accepted + refused == count

    # Two rounds: publishes in flight may all pass a quorum queue's soft bound (seen: 20
    # of 20), but once it is over the bound every later publish is refused.
    for first in (0, sent // 2):
        batch = range(first, first + sent // 2)
        pipeline.publish([("tiny-1.env", reading(), {"message_id": f"f{i}"}) for i in batch])
        wait_for(lambda n=first: settled(n + sent // 2), 30, "publishes accepted or refused")
    accepted = int(pipeline.metric("relay", "fairway_relay_accepted_total", tenant="tiny"))
    assert bound <= accepted < sent
    assert pipeline.depth(topology.tenant_queue_name("tiny")) == accepted
    rejected = pipeline.rejected(sent - accepted)
    assert len(rejected) == sent - accepted
    assert {h[topology.REASON_HEADER] for h, _ in rejected} == {"tenant_backlog_full"}
    pipeline.start("scheduler")
    pipeline.wait_stored(accepted)
    ids = {split_reading_id(d["_id"])[2] for d in pipeline.db["telemetry"].find({}, {"_id": 1})}
    assert len(ids) == accepted and ids <= {f"f{i}" for i in range(sent)}


# -- shares follow backlogs: the consumers are recycled ----------------------------------
def _fill(pipeline: Pipeline, tenant: str, count: int) -> None:
    """Put ``count`` relay-shaped messages straight into ``tenant.<id>``."""
    now, batch = time.time(), uuid.uuid4().hex[:8]
    with pipeline.channel() as channel:
        for i in range(count):
            reading_ = Reading(f"{tenant}-1", "env", f"{batch}-{i}", now, {"v": i})
            body = tenant_message(tenant, reading_, now)
            channel.basic_publish(topology.TENANTS, tenant, body)
    queue = topology.tenant_queue_name(tenant)
    # Unconfirmed (fast) publishes: wait until the broker has queued them (or they were
    # consumed); the tests check the exact totals at the end.
    wait_for(
        lambda: pipeline.depth(queue) + pipeline.stored(tenant=tenant) >= count * 0.9,
        60,
        f"{count} messages in {queue}",
    )


SHARE_SETTINGS = {
    "scheduler_buffer": 1000,
    "scheduler_prefetch": 20,
    "batch_size": 20,
    "batch_max": 20,
    "writers": 1,
    "drr_quantum": 10,
}


@BOTH
@pytest.mark.settings(**SHARE_SETTINGS)
def test_prefetch_is_reshared_by_weight_as_backlogs_change(
    pipeline: Pipeline, queue_type: str
) -> None:
    tenants = {"light": 1, "heavy": 3}
    for tenant, weight in tenants.items():
        pipeline.tenant(tenant, weight=weight)
    _fill(pipeline, "light", 10_000)
    pipeline.start("scheduler")

    def prefetch(tenant: str) -> float:
        return pipeline.metric("scheduler", "fairway_scheduler_prefetch", tenant=tenant)

    def stored(tenant: str) -> float:
        return pipeline.metric("scheduler", "fairway_scheduler_stored_total", tenant=tenant)

    # Only "light" has a backlog: it gets the whole budget, "heavy" keeps the floor.
    wait_for(lambda: prefetch("light") == 1000, 30, "light to get the whole budget")
    assert prefetch("heavy") == 20

    # "heavy" floods while "light" still has a backlog (the scheduler is paused while
    # the queues fill, so the test does not depend on how fast it writes).
    scheduler = pipeline.procs["scheduler"].proc
    scheduler.send_signal(signal.SIGSTOP)
    try:
        _fill(pipeline, "light", 10_000)
        _fill(pipeline, "heavy", 20_000)
    finally:
        scheduler.send_signal(signal.SIGCONT)
    # Re-shared 1:3: "light" shrinks while backlogged, "heavy" grows.
    wait_for(lambda: prefetch("light") == 250 and prefetch("heavy") == 750, 30, "the 1:3 re-share")
    # Served 1:3 while both are backlogged (DRR over buffers of 250 and 750).
    wait_for(lambda: stored("heavy") >= 1000, 30, "heavy to be served")
    light0, heavy0 = stored("light"), stored("heavy")
    wait_for(lambda: stored("heavy") - heavy0 >= 3000, 60, "a window of served messages")
    light1, heavy1 = stored("light"), stored("heavy")
    assert pipeline.depth(topology.tenant_queue_name("light")) > 0, "light ran dry: no window"
    ratio = (heavy1 - heavy0) / max(1.0, light1 - light0)
    assert 2.4 <= ratio <= 3.6, f"heavy:light served {ratio:.2f}"

    # "heavy" runs dry first: the floor for it, the whole budget for "light" ...
    wait_for(lambda: prefetch("light") == 1000 and prefetch("heavy") == 20, 60, "the re-share back")
    # ... until "light" runs dry too.
    wait_for(lambda: prefetch("light") == 20, 60, "light back to the floor")
    pipeline.wait_stored(40_000, timeout=120)
    changes = {
        t: pipeline.metric("scheduler", "fairway_scheduler_prefetch_changes_total", tenant=t)
        for t in tenants
    }
    # 20-1000-250-1000-20 and 20-750-20; a flickering backlog may add a step, not more.
    assert 4 <= changes["light"] <= 6 and 2 <= changes["heavy"] <= 4, changes
    for tenant in tenants:
        assert stored(tenant) == pipeline.stored(tenant=tenant)
        dups = pipeline.metric("scheduler", "fairway_scheduler_duplicates_total", tenant=tenant)
        assert dups == 0
    redelivered = _redelivered(pipeline, list(tenants))
    if queue_type == CLASSIC:
        # A recycle requeues nothing: deliveries on the wire reach the scheduler.
        assert redelivered == 0
    else:
        # RabbitMQ's quorum queue client returns what is still in flight inside the
        # broker at the cancel: redelivered once, never written twice (dups == 0).
        assert redelivered <= sum(changes.values()) * 1000
    assert pipeline.stop("scheduler") == 0
