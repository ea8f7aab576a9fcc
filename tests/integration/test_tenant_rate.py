"""A tenant plan's accepted-reading rate (``max_rate``) on a real relay, scheduler,
broker and database: set by the operator (CLI, API), carried to the relay by the tenant
watch, its excess refused ``tenant_rate_limited`` (by index, then whole and unread while
the plan's bucket is dry) and counted, other tenants untouched,
every accepted reading stored once."""

from __future__ import annotations

import json
import time
from typing import Any

from click.testing import CliRunner

from fairway.cli import main as cli
from fairway.kernel import topology
from fairway.storage import mongo
from tests.harness import Pipeline, reading, stored_readings, wait_for
from tests.integration.test_web_api import world  # noqa: F401  (a fixture)

REFUSED = "fairway_relay_tenant_rate_limited_total"
UNREAD = "fairway_relay_refused_unread_total"


def _cli(pipeline: Pipeline, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, list(args), env=pipeline.settings.environ())
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _batch(device: str, mid: str, count: int) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    now = time.time()
    return (f"{device}.env", [reading(ts=now - i, n=i) for i in range(count)], {"message_id": mid})


def _ids(pipeline: Pipeline, tenant: str) -> list[str]:
    low = f"{tenant}:"
    query = {"_id": {"$gte": low, "$lt": f"{tenant};"}}
    return sorted(d["_id"] for d in stored_readings(pipeline.db, query, {"_id": 1}))


def test_a_tenants_readings_beyond_its_plan_are_refused_and_counted_others_untouched(
    pipeline: Pipeline,
) -> None:
    # The plan from the start: 20 readings of burst, then 1 every 100 s.
    _cli(pipeline, "tenant", "create", "capped", "--max-rate", "0.01", "--max-burst", "20")
    pipeline.tenant("calm")
    for tenant, device in (("capped", "cap-1"), ("capped", "cap-2"), ("calm", "calm-1")):
        pipeline.device(tenant, device)
    relay = pipeline.start("relay")
    pipeline.start("scheduler")
    wait_for(lambda: relay.metric("fairway_relay_tenant_queues") == 2, 30, "relay consuming")

    # Each device within its own rate (1,000/s); together beyond their tenant's plan.
    pipeline.publish(
        [_batch("cap-1", "a", 15), _batch("cap-2", "b", 15), _batch("calm-1", "c", 60)]
    )
    pipeline.wait_stored(20, tenant="capped")
    pipeline.wait_stored(60, tenant="calm")
    rejected = pipeline.rejected(10)
    assert len(rejected) == 10
    assert {h[topology.REASON_HEADER] for h, _ in rejected} == {"tenant_rate_limited"}
    assert {h[topology.TENANT_HEADER] for h, _ in rejected} == {"capped"}
    assert {h[topology.DEVICE_HEADER] for h, _ in rejected} == {"cap-2"}
    assert sorted(h[topology.INDEX_HEADER] for h, _ in rejected) == list(range(5, 15))
    assert relay.metric(REFUSED, tenant="capped") == 10
    assert relay.metric(REFUSED, tenant="calm") == 0
    assert relay.metric("fairway_relay_rejected_total", reason="tenant_rate_limited") == 10
    # Every accepted reading stored once: cap-1's whole batch, cap-2's first five.
    expected = [f"capped:cap-1:a#{i}" for i in range(15)] + [
        f"capped:cap-2:b#{i}" for i in range(5)
    ]
    assert _ids(pipeline, "capped") == sorted(expected)
    assert len(_ids(pipeline, "calm")) == 60

    # The plan's bucket ran dry: below its opening level (one second of its rate, at
    # least one token: 100 s away here) the tenant's messages are refused whole before
    # they are read: broken JSON too.
    pipeline.publish([("cap-1.env", b"{not json", {}), _batch("cap-2", "x", 1)])
    unread = pipeline.rejected(2)
    assert [h[topology.REASON_HEADER] for h, _ in unread] == ["tenant_rate_limited"] * 2
    assert all(topology.INDEX_HEADER not in h for h, _ in unread)  # whole messages
    assert unread[0][1] == b"{not json"  # as sent
    assert relay.metric(UNREAD, tenant="capped", reason="tenant_rate_limited") == 2
    assert relay.metric(REFUSED, tenant="capped") == 12  # each counts as one reading
    assert relay.metric("fairway_relay_rejected_total", reason="malformed_json") == 0

    # The operator lifts the plan: the relay reads the change by revision and accepts all.
    reads = relay.metric("fairway_relay_tenant_reads_total", kind="changes")
    assert _cli(pipeline, "tenant", "set-rate", "capped", "default") == {
        "tenant": "capped",
        "max_rate": None,
        "max_burst": None,
    }
    wait_for(
        lambda: relay.metric("fairway_relay_tenant_reads_total", kind="changes") > reads,
        10,
        "the relay to read the change",
    )
    time.sleep(0.5)  # the plan is applied on the relay's loop right after the read
    pipeline.publish([_batch("cap-1", "d", 50)])
    pipeline.wait_stored(70, tenant="capped")

    # A new plan starts with a full bucket of its own burst.
    reads = relay.metric("fairway_relay_tenant_reads_total", kind="changes")
    _cli(pipeline, "tenant", "set-rate", "capped", "0.01", "--max-burst", "5")
    wait_for(
        lambda: relay.metric("fairway_relay_tenant_reads_total", kind="changes") > reads,
        10,
        "the relay to read the change",
    )
    time.sleep(0.5)
    pipeline.publish([_batch("cap-2", "e", 8)])
    pipeline.wait_stored(75, tenant="capped")
    more = pipeline.rejected(3)
    assert sorted(h[topology.INDEX_HEADER] for h, _ in more) == [5, 6, 7]
    assert relay.metric(REFUSED, tenant="capped") == 15
    time.sleep(1.0)  # nothing more arrives
    assert pipeline.stored(tenant="capped") == 75 and pipeline.stored(tenant="calm") == 60
    assert pipeline.stop("relay") == 0


def test_a_backlog_that_arrives_before_its_devices_look_up_meets_the_plan_unread(
    pipeline: Pipeline,
) -> None:
    # Queued before the relay runs: its whole first window (the tenant prefetch, 100)
    # arrives while the device's registry look-up is under way. Before released
    # deliveries met the plan's gate, all 61 were read: none counted unread, and the
    # batch's five readings were refused one by one.
    _cli(pipeline, "tenant", "create", "capped", "--max-rate", "0.01", "--max-burst", "20")
    pipeline.device("capped", "cap-1")
    pipeline.publish(
        [("cap-1.env", reading(n=i), {"message_id": f"m{i}"}) for i in range(60)]
        + [("cap-1.env", [reading(n=i) for i in range(5)], {"message_id": "b"})]
    )
    relay = pipeline.start("relay")
    pipeline.start("scheduler")
    pipeline.wait_stored(20, tenant="capped")
    rejected = pipeline.rejected(41)
    assert len(rejected) == 41
    # The first 20 read and accepted; the rest refused whole, before they were read, as
    # they would have been had the device been cached: one reading each.
    assert {h[topology.REASON_HEADER] for h, _ in rejected} == {"tenant_rate_limited"}
    assert all(topology.INDEX_HEADER not in h for h, _ in rejected)
    assert relay.metric(UNREAD, tenant="capped", reason="tenant_rate_limited") == 41
    assert relay.metric(REFUSED, tenant="capped") == 41
    assert relay.metric("fairway_relay_parked") == 0
    assert _ids(pipeline, "capped") == sorted(f"capped:cap-1:m{i}" for i in range(20))
    assert pipeline.stop("relay") == 0


def test_the_operator_api_sets_and_clears_a_plan_and_refuses_bad_values(
    world: dict[str, Any],  # noqa: F811
) -> None:
    op = world["api"]["op"]
    made = op("POST", "/api/tenants", {"tenant": "plan", "max_rate": 250, "max_burst": 500})
    assert made.status_code == 201, made.get_json()
    assert (made.get_json()["max_rate"], made.get_json()["max_burst"]) == (250, 500)
    for body in (
        {"max_rate": -1},
        {"max_rate": 1e12},
        {"max_rate": "fast"},
        {"max_burst": 0},
        {"max_rate": None, "max_burst": 0.5},
    ):
        bad = op("PATCH", "/api/tenants/plan", body)
        assert bad.status_code == 400, (body, bad.get_json())
        assert set(bad.get_json()) == {"error", "message"} and bad.get_json()["message"]
    bad = op("POST", "/api/tenants", {"tenant": "plan2", "max_rate": -5})
    assert bad.status_code == 400 and set(bad.get_json()) == {"error", "message"}
    changed = op("PATCH", "/api/tenants/plan", {"max_rate": 0})  # unlimited, its own
    assert changed.status_code == 200
    assert (changed.get_json()["max_rate"], changed.get_json()["max_burst"]) == (0, 500)
    cleared = op("PATCH", "/api/tenants/plan", {"max_rate": None, "max_burst": None})
    assert cleared.status_code == 200
    assert (cleared.get_json()["max_rate"], cleared.get_json()["max_burst"]) == (None, None)
    assert "max_rate" not in world["db"][mongo.TENANTS].find_one({"_id": "plan"})
    # Weight-only changes leave the plan alone.
    op("PATCH", "/api/tenants/plan", {"max_rate": 7})
    assert op("PATCH", "/api/tenants/plan", {"weight": 3}).get_json()["max_rate"] == 7
    assert world["api"]["adm_a"]("PATCH", "/api/tenants/a", {"max_rate": 1}).status_code == 403
