"""Per-tenant ingest queues: each device's messages enter its tenant's ``ingest.<tenant>``.

What matches no device binding reaches the shared ``ingest`` through ``telemetry``'s
alternate exchange and is refused there with its reason; the relay consumes every tenant
queue with its own prefetch, so a backlog in one tenant's queue does not delay another.
Routes are read from queue depths while no relay consumes (a passive declare is exact as
soon as the publish is confirmed), never from the management API's publish statistics:
those were lost or over a minute late in full runs (a short-lived publishing channel's
last counts may be dropped before the statistics collector reads them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
from typing import Any

import orjson
import pika
import pytest

from fairway.kernel import topology
from fairway.storage import registry
from tests.harness import Pipeline, management, reading, wait_for


def _wait_depth(pipeline: Pipeline, queue: str, count: int) -> None:
    wait_for(lambda: pipeline.depth(queue) >= count, 30, f"{count} in {queue}")
    assert pipeline.depth(queue) == count


def _binding_keys(pipeline: Pipeline, queue: str) -> set[str]:
    vhost = urllib.parse.quote(pipeline.name, safe="")
    found = management("GET", f"queues/{vhost}/{urllib.parse.quote(queue, safe='')}/bindings")
    return {b["routing_key"] for b in found if b["source"] == topology.TELEMETRY}


def _fairway(pipeline: Pipeline, *args: str) -> Any:
    """Run ``fairway <args>`` against this pipeline; its JSON output."""
    done = subprocess.run(
        [sys.executable, "-m", "fairway", *args],
        env={**os.environ, **pipeline.settings.environ()},
        capture_output=True,
        check=True,
        timeout=120,
    )
    return orjson.loads(done.stdout)


def test_a_devices_readings_go_through_its_tenants_ingest_queue(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.tenant("zeta")
    pipeline.device("zeta", "zeta-1")
    assert _binding_keys(pipeline, "ingest.acme") == {"dev-1.*"}
    assert _binding_keys(pipeline, "ingest.zeta") == {"zeta-1.*"}
    assert _binding_keys(pipeline, topology.INGEST) == set()  # fed by the alternate exchange
    pipeline.publish([("dev-1.env", reading(), {"message_id": f"a{i}"}) for i in range(20)])
    pipeline.publish([("zeta-1.power", reading(), {"message_id": f"z{i}"}) for i in range(5)])
    _wait_depth(pipeline, "ingest.acme", 20)
    _wait_depth(pipeline, "ingest.zeta", 5)
    assert pipeline.depth(topology.INGEST) == 0
    relay = pipeline.start("relay")
    pipeline.start("scheduler")
    pipeline.wait_stored(20, tenant="acme")
    pipeline.wait_stored(5, tenant="zeta")
    assert relay.metric("fairway_relay_tenant_queues") == 2
    assert relay.metric("fairway_relay_prefetch_bound") == (
        pipeline.settings.relay_prefetch + 2 * pipeline.settings.relay_tenant_prefetch
    )
    for queue in ("ingest.acme", "ingest.zeta", topology.INGEST):
        assert pipeline.depth(queue) == 0


def test_messages_matching_no_device_land_in_ingest_and_are_refused(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.publish(
        [
            ("ghost.env", reading(), {}),  # not registered
            ("dev-1", reading(), {}),  # no stream
            ("dev-1.env.extra", reading(), {}),  # two words
        ]
    )
    # Routed (confirmed) before any relay runs: read from the queues themselves, not from
    # the management API's statistics, which lagged over 60 s twice in full runs.
    assert pipeline.depth(topology.INGEST) == 3
    assert pipeline.depth("ingest.acme") == 0
    pipeline.start("relay")
    pipeline.start("scheduler")
    rejected = pipeline.rejected(3)
    reasons = sorted(h[topology.REASON_HEADER] for h, _ in rejected)
    assert reasons == ["bad_routing_key", "bad_routing_key", "unknown_device"]


def test_a_device_registered_while_the_relay_runs_is_served(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.start("relay")
    pipeline.start("scheduler")
    pipeline.publish([("dev-1.env", reading(), {})])
    pipeline.wait_stored(1)

    pipeline.device("acme", "dev-2")
    started = time.monotonic()
    pipeline.publish([("dev-2.env", reading(), {"message_id": f"m{i}"}) for i in range(5)])
    pipeline.wait_stored(5, timeout=10, device="dev-2")
    assert time.monotonic() - started < 10
    # Its route: with the relay stopped, the next reading waits in the tenant's queue.
    pipeline.stop("relay")
    pipeline.publish([("dev-2.env", reading(), {"message_id": "routed"})])
    _wait_depth(pipeline, "ingest.acme", 1)
    assert pipeline.depth(topology.INGEST) == 0


def test_a_new_tenant_is_consumed_within_the_refresh_time(pipeline: Pipeline) -> None:
    pipeline.tenant("first")
    pipeline.device("first", "f-1")
    relay = pipeline.start("relay")
    pipeline.start("scheduler")
    pipeline.publish([("f-1.env", reading(), {})])
    pipeline.wait_stored(1)

    pipeline.tenant("second")
    pipeline.device("second", "s-1")
    started = time.monotonic()
    pipeline.publish([("s-1.env", reading(), {"message_id": f"m{i}"}) for i in range(5)])
    pipeline.wait_stored(5, timeout=10, tenant="second")
    # Refresh every 0.5 s in the tests; the scheduler's own refresh adds as much.
    assert time.monotonic() - started < 10
    assert relay.metric("fairway_relay_tenant_queues") == 2
    pipeline.stop("relay")
    pipeline.publish([("s-1.env", reading(), {"message_id": "routed"})])
    _wait_depth(pipeline, "ingest.second", 1)
    assert pipeline.depth(topology.INGEST) == 0


def test_fairway_declare_binds_devices_registered_before_their_binding(
    pipeline: Pipeline,
) -> None:
    """The upgrade path: devices recorded without a binding are served through ``ingest``
    until ``fairway declare`` binds them; the CLI's ``device register`` binds at once.

    Routes are read from queue depths while no relay consumes (a passive declare is
    exact at once), not from the management API's publish counts: with a single message
    from a short-lived channel those sometimes never showed within a minute (CI)."""
    pipeline.tenant("acme")
    registry.register_device(pipeline.db, "acme", "old-1")  # the record only, as before
    pipeline.publish([("old-1.env", reading(), {"message_id": "before"})])
    wait_for(lambda: pipeline.depth(topology.INGEST) == 1, 30, "the reading in ingest")
    assert pipeline.depth("ingest.acme") == 0
    assert _binding_keys(pipeline, "ingest.acme") == set()
    pipeline.start("relay")
    pipeline.start("scheduler")
    pipeline.wait_stored(1)

    assert _fairway(pipeline, "declare")["devices_bound"] == 1
    assert _fairway(pipeline, "device", "register", "acme", "new-1")["device"] == "new-1"
    assert _binding_keys(pipeline, "ingest.acme") == {"old-1.*", "new-1.*"}
    pipeline.stop("relay")
    pipeline.publish([("old-1.env", reading(), {"message_id": "after"})])
    pipeline.publish([("new-1.env", reading(), {"message_id": "first"})])
    wait_for(lambda: pipeline.depth("ingest.acme") == 2, 30, "both readings in ingest.acme")
    assert pipeline.depth(topology.INGEST) == 0
    pipeline.start("relay")
    pipeline.wait_stored(3)
    assert _fairway(pipeline, "declare")["devices_bound"] == 2  # idempotent
    assert _binding_keys(pipeline, "ingest.acme") == {"old-1.*", "new-1.*"}


def _flood(pipeline: Pipeline, routing_key: str, count: int) -> None:
    """Publish ``count`` valid readings fast (no confirms); wait until they are queued."""
    with pipeline.channel() as channel:
        props = pika.BasicProperties(delivery_mode=2)
        for i in range(count):
            body = orjson.dumps({"ts": time.time(), "values": {"x": i}, "id": f"f{i}"})
            channel.basic_publish(topology.TELEMETRY, routing_key, body, props)
    wait_for(lambda: pipeline.depth("ingest.hostile") >= count, 60, f"{count} in ingest.hostile")


# A small backlog for the flooding tenant: its excess is refused, as an attacker's is.
@pytest.mark.settings(rejected_device_burst=1e9, rejected_tenant_burst=1e9)
def test_a_backlog_in_one_tenants_ingest_queue_does_not_delay_another(
    pipeline: Pipeline,
) -> None:
    """Functional, not a benchmark: another tenant's readings pass a deep backlog.

    With one shared FIFO ``ingest`` they would wait behind every flooded message; here
    they are stored while the flooding tenant's queue still holds most of its backlog.
    """
    flood = 60_000
    pipeline.tenant("hostile", max_backlog=1_000)
    pipeline.device("hostile", "h-1")
    pipeline.tenant("quiet")
    pipeline.device("quiet", "q-1")
    _flood(pipeline, "h-1.env", flood)
    pipeline.start("scheduler")
    relay = pipeline.start("relay")

    started = time.monotonic()
    pipeline.publish([("q-1.env", reading(), {"message_id": f"q{i}"}) for i in range(10)])
    pipeline.wait_stored(10, timeout=30, tenant="quiet")
    quiet_s = time.monotonic() - started
    left = pipeline.depth("ingest.hostile")
    assert left > flood // 4, f"the flood was {flood - left} of {flood} through already"
    assert quiet_s < 15
    # The relay never held more than its bound of the flood.
    assert relay.metric("fairway_relay_held") <= relay.metric("fairway_relay_prefetch_bound")
    wait_for(lambda: pipeline.depth("ingest.hostile") == 0, 120, "the flood to be handled")
    assert relay.alive()
