"""Tenant changes reach running relays and schedulers by revision (issue 17).

A tenant created while relay and scheduler run is served within the refresh time,
with only the changed records read (no full list between resyncs); a removed tenant's
queue stops being consumed: what it holds stays there until the tenant is created
again; bulk provisioning and removal both take revisions.
"""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from fairway.cli import main as cli
from fairway.kernel import topology
from fairway.provision_bulk import TenantItem, provision_many
from fairway.storage import mongo, registry
from tests.harness import Pipeline, reading, wait_for
from tests.integration.test_scheduler_pool import _fill

REFRESH_S = 0.5  # the integration tests' FAIRWAY_TENANT_REFRESH_S


@pytest.mark.settings(tenant_resync_s=3600.0)  # only the change reads can find it
def test_a_tenant_created_while_relay_and_scheduler_run_is_served_within_the_refresh_time(
    pipeline: Pipeline,
) -> None:
    pipeline.tenant("early")
    pipeline.device("early", "early-1")
    relay, scheduler = pipeline.start("relay"), pipeline.start("scheduler")
    wait_for(lambda: relay.metric("fairway_relay_tenant_queues") == 1, 30, "relay consuming")
    wait_for(lambda: scheduler.metric("fairway_scheduler_tenants") == 1, 30, "scheduler")
    time.sleep(3 * REFRESH_S)  # several looks with nothing changed

    pipeline.tenant("late")
    pipeline.device("late", "late-1")
    created = time.monotonic()
    wait_for(lambda: relay.metric("fairway_relay_tenant_queues") == 2, 10, "relay: late")
    wait_for(lambda: scheduler.metric("fairway_scheduler_tenants") == 2, 10, "scheduler: late")
    seen_s = time.monotonic() - created
    pipeline.publish([("late-1.env", reading(temp=1.0), {})])
    pipeline.wait_stored(1, timeout=10, tenant="late")
    # Both saw it within a refresh (and a look's own time), from the changes alone.
    assert seen_s < 4 * REFRESH_S + 1.0, seen_s
    for proc, prefix in ((relay, "relay"), (scheduler, "scheduler")):
        name = f"fairway_{prefix}_tenant_reads_total"
        assert proc.metric(name, kind="full") == 1
        assert proc.metric(name, kind="changes") >= 1
    assert pipeline.stop("relay") == 0 and pipeline.stop("scheduler") == 0


def test_a_removed_tenants_queue_is_no_longer_consumed_and_kept_until_it_returns(
    pipeline: Pipeline,
) -> None:
    pipeline.tenant("stay")
    pipeline.tenant("gone")
    scheduler = pipeline.start("scheduler")
    wait_for(lambda: scheduler.metric("fairway_scheduler_tenants") == 2, 30, "two tenants")
    _fill(pipeline, "gone", 5, prefix="before")
    wait_for(
        lambda: scheduler.metric("fairway_scheduler_stored_total", tenant="gone") == 5, 30, "5"
    )

    before = registry.tenants_version(pipeline.db)
    env = pipeline.settings.environ()
    result = CliRunner().invoke(cli, ["tenant", "remove", "gone"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"tenant": "gone", "removed": True, "queue": "tenant.gone"}
    assert registry.tenants_version(pipeline.db) == before + 1  # the removal took a revision
    assert registry.tenants_changed_since(pipeline.db, before) == ([], {"gone"})
    again = CliRunner().invoke(cli, ["tenant", "remove", "gone"], env=env)
    assert again.exit_code == 1 and "unknown tenant 'gone'" in again.stderr

    wait_for(lambda: scheduler.metric("fairway_scheduler_tenants") == 1, 10, "consumer cancelled")
    assert scheduler.metric("fairway_scheduler_tenants_removed_total") == 1
    # Its per-tenant series went with it (tenants that come and go must not grow them).
    assert "gone" not in scheduler.metric_by("fairway_scheduler_stored_total", "tenant")
    queue = topology.tenant_queue_name("gone")
    wait_for(lambda: pipeline.queue(queue).get("consumers") == 0, 30, "no consumer at the broker")
    # Readings reaching its queue now (accepted by a relay before it noticed) wait there.
    _fill(pipeline, "gone", 20, prefix="after")
    _fill(pipeline, "stay", 10)
    wait_for(
        lambda: scheduler.metric("fairway_scheduler_stored_total", tenant="stay") == 10, 30, "stay"
    )
    time.sleep(4 * REFRESH_S)
    assert pipeline.depth(queue) == 20
    assert pipeline.stored(tenant="gone") == 5

    # Created again (same id): its queue is consumed again and what it held is stored.
    pipeline.tenant("gone")
    pipeline.wait_stored(25, timeout=30, tenant="gone")
    assert pipeline.depth(queue) == 0
    assert pipeline.alive("scheduler") and pipeline.stop("scheduler") == 0


def test_bulk_provisioning_takes_revisions_a_watcher_finds(pipeline: Pipeline) -> None:
    pipeline.tenant("first")
    before = registry.tenants_version(pipeline.db)
    items = [TenantItem(tenant=f"b{i:03d}") for i in range(250)]  # two database chunks
    report = provision_many(pipeline.settings, pipeline.db, items)
    assert report.counts()["tenants"]["created"] == 250
    changed, removed = registry.tenants_changed_since(pipeline.db, before)
    assert sorted(t.id for t in changed) == [f"b{i:03d}" for i in range(250)] and not removed
    assert registry.tenants_version(pipeline.db) > before
    assert pipeline.db[mongo.TENANTS].count_documents({"rev": {"$lte": before}}) == 1
