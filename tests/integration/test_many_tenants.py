"""Exactly once with 1,000 tenants: kill -9 of the scheduler and the relay mid-run (issue 17).

Modest sizes so the suite stays fast: 1,000 tenants with one device each, provisioned
in bulk, a few readings per device; only the processes this test started are killed
(the shared services are untouched). Quorum variant with fewer tenants, since each
quorum queue is a Raft group the one-node broker creates slowly.
"""

from __future__ import annotations

import os
import time

from fairway.provision_bulk import TenantItem, provision_many
from tests.harness import Pipeline, wait_for
from tests.integration.queue_types import BOTH, CLASSIC
from tests.integration.test_faults import Publisher, _assert_exactly_once

TENANTS = {CLASSIC: int(os.environ.get("FAIRWAY_TEST_MANY_TENANTS", "1000"))}
QUORUM_TENANTS = int(os.environ.get("FAIRWAY_TEST_MANY_TENANTS_QUORUM", "200"))
READINGS_PER_DEVICE = 3


@BOTH
def test_kill_9_of_scheduler_and_relay_with_many_tenants_stores_every_reading_once(
    pipeline: Pipeline, queue_type: str
) -> None:
    tenants = TENANTS.get(queue_type, QUORUM_TENANTS)
    by_tenant = {f"m{i:04d}": [f"m{i:04d}-d1"] for i in range(tenants)}
    items = [TenantItem(tenant=t, devices=d) for t, d in by_tenant.items()]
    started = time.monotonic()
    report = provision_many(pipeline.settings, pipeline.db, items)
    provision_s = time.monotonic() - started
    assert report.counts()["tenants"]["created"] == tenants, provision_s
    relay, scheduler = pipeline.start("relay"), pipeline.start("scheduler")
    wait_for(lambda: relay.metric("fairway_relay_tenant_queues") == tenants, 120, "relay")
    wait_for(lambda: scheduler.metric("fairway_scheduler_tenants") == tenants, 120, "scheduler")

    total = tenants * READINGS_PER_DEVICE
    publisher = Publisher(pipeline, by_tenant, total, rate=total / 4.0)  # about 4 s
    publisher.start()
    for role in ("scheduler", "relay"):
        time.sleep(1.0)  # mid-run: readings are in flight in every stage
        if role == "scheduler":
            assert publisher.is_alive(), "the run ended before the first kill"
        pipeline.kill(role)
        pipeline.start(role)
    _assert_exactly_once(pipeline, [publisher])
    assert pipeline.stop("relay") == 0
    assert pipeline.stop("scheduler") == 0
