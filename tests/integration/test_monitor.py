"""``fairway monitor``: device status from broker connection events, and alert rules."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from fairway.domain import alerts
from fairway.storage import mongo, registry, rules
from tests.harness import Pipeline, management, reading, wait_for
from tests.integration.test_events import listen


def device_doc(pipeline: Pipeline, device: str) -> dict:
    return registry.device_document(pipeline.db, device) or {}


def listed_connections(pipeline: Pipeline, user: str) -> int:
    return sum(
        1
        for c in management("GET", f"vhosts/{pipeline.name}/connections") or []
        if c.get("user") == user
    )


def test_devices_go_online_and_offline_with_their_connections(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    one = pipeline.device("acme", "dev-1")
    pipeline.device("acme", "dev-2")
    registry.set_device_enabled(pipeline.db, "dev-2", True)
    # Left online by a previous monitor run: the first snapshot corrects it.
    pipeline.db[mongo.DEVICES].update_one({"_id": "dev-2"}, {"$set": {"online": True}})
    pipeline.start("web")  # the broker asks it about device logins
    with listen(pipeline, "status.#") as fetch:
        pipeline.start("monitor")
        wait_for(lambda: fetch(), 30, "the stale device's offline status")
        assert [(e["device"], e["online"]) for _, _, e in fetch()] == [("dev-2", False)]
        assert device_doc(pipeline, "dev-2")["online"] is False

        with pipeline.channel("dev-1", one["password"]):
            wait_for(lambda: len(fetch()) == 2, 30, "dev-1's online status")
            key, props, online = fetch()[1]
            assert key == "status.acme.dev-1" and props.content_type == "application/json"
            assert online["kind"] == "status" and online["online"] is True
            assert online["tenant"] == "acme"
            doc = wait_for(
                lambda: (
                    device_doc(pipeline, "dev-1").get("online") and device_doc(pipeline, "dev-1")
                ),
                10,
                "dev-1 stored online",
            )
            assert isinstance(doc["last_seen"], datetime)
            with pipeline.channel("dev-1", one["password"]):
                wait_for(lambda: listed_connections(pipeline, "dev-1") == 2, 30, "2 connections")
            # One of two connections closed: still online.
            time.sleep(1.5)  # so the last close is distinguishable by its broker time
            last_close = time.time()
        wait_for(lambda: len(fetch()) == 3, 30, "dev-1's offline status")
        events = [e for _, _, e in fetch()]
    assert [(e["device"], e["online"]) for e in events] == [
        ("dev-2", False),
        ("dev-1", True),
        ("dev-1", False),
    ]
    offline_at = datetime.fromisoformat(events[2]["at"]).timestamp()
    assert offline_at >= last_close - 0.05  # the last close, not the first
    assert device_doc(pipeline, "dev-1")["online"] is False
    # A service account (guest here) connecting is not a device.
    pipeline.depth("ingest")
    wait_for(
        lambda: pipeline.metric("monitor", "fairway_monitor_ignored_connections_total") >= 1,
        30,
        "the guest connection to be ignored",
    )
    assert pipeline.metric("monitor", "fairway_monitor_status_events_total", online="true") == 1


def test_a_restarted_monitor_finds_devices_that_connected_while_it_was_down(
    pipeline: Pipeline,
) -> None:
    pipeline.tenant("acme")
    one = pipeline.device("acme", "dev-1")
    pipeline.start("web")
    with listen(pipeline, "status.#") as fetch:
        with pipeline.channel("dev-1", one["password"]):
            wait_for(lambda: listed_connections(pipeline, "dev-1") == 1, 30, "the listing")
            pipeline.start("monitor")
            wait_for(lambda: fetch(), 30, "dev-1's online status from the snapshot")
            assert device_doc(pipeline, "dev-1")["online"] is True
        # The connection the monitor only knows from the snapshot closes: offline.
        wait_for(lambda: len(fetch()) == 2, 30, "dev-1's offline status")
        assert [e["online"] for _, _, e in fetch()] == [True, False]


@pytest.mark.settings(rules_cache_ttl_s=0.2)
def test_a_rule_fires_once_and_clears_once_with_hysteresis_across_a_restart(
    pipeline: Pipeline,
) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.device("acme", "dev-2")
    rule = alerts.create_rule(pipeline.db, "acme", "dev-1", "temp", ">", 30.0, 5.0)
    alerts.create_rule(pipeline.db, "acme", None, "humidity", "<", 10.0, 0.0)
    pipeline.start("relay")
    pipeline.start("scheduler")
    pipeline.start("monitor")
    sent = evaluated = 0

    def send(device: str, **values: float) -> None:
        nonlocal sent, evaluated
        sent += 1
        evaluated += 1
        pipeline.publish([(f"{device}.env", reading(**values), {"message_id": f"m{sent}"})])
        # One reading at a time, each evaluated before the next, so the sequence is exact.
        wait_for(
            lambda: (
                pipeline.metric("monitor", "fairway_monitor_telemetry_events_total") == evaluated
            ),
            30,
            f"reading {sent} evaluated",
        )

    with listen(pipeline, "alert.#") as fetch:
        for value in (20.0, 35.0):
            send("dev-1", temp=value)
        wait_for(lambda: fetch(), 10, "the alert to fire")
        state = pipeline.db[rules.ALERT_STATE].find_one({"_id": f"{rule['_id']}:dev-1"})
        assert state["firing"] is True
        assert pipeline.stop("monitor") == 0
        pipeline.start("monitor")  # must not re-fire, and must still know it is firing
        evaluated = 0  # a new process: its counter starts again
        for device, value in (
            ("dev-1", 36.0),
            ("dev-1", 28.0),
            ("dev-2", 99.0),
            ("dev-1", 25.0),
            ("dev-1", 26.0),
        ):
            send(device, temp=value)
        send("dev-2", humidity=5.0)  # the tenant-wide rule, on another device
        wait_for(lambda: len(fetch()) == 3, 10, "three alert events")
        time.sleep(0.5)  # room for a wrong extra event to show up
        events = [e for _, _, e in fetch()]
        got = [(k, e["rule"], e["device"], e["state"], e["value"]) for k, _, e in fetch()]
    assert got[:2] == [
        ("alert.acme.dev-1", rule["_id"], "dev-1", "firing", 35.0),
        ("alert.acme.dev-1", rule["_id"], "dev-1", "cleared", 25.0),
    ]
    assert got[2][2:] == ("dev-2", "firing", 5.0)
    assert len(got) == 3
    body = events[0]
    assert {k: body[k] for k in ("kind", "tenant", "metric", "op", "threshold")} == {
        "kind": "alert",
        "tenant": "acme",
        "metric": "temp",
        "op": ">",
        "threshold": 30.0,
    }
    assert pipeline.metric("monitor", "fairway_monitor_alert_events_total", state="cleared") == 1


def test_rule_store_validates_and_scopes_by_tenant(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.tenant("globex")
    pipeline.device("acme", "dev-1")
    db = pipeline.db
    bad = [
        ("acme", "dev-1", "temp", "==", 1, 0),
        ("acme", "dev-1", "temp", ">", float("nan"), 0),
        ("acme", "dev-1", "temp", ">", 1, -1),
        ("acme", "dev-1", "te.mp", ">", 1, 0),
        ("acme", "dev-1", "temp", ">", True, 0),
        ("globex", "dev-1", "temp", ">", 1, 0),  # another tenant's device
        ("acme", "nope", "temp", ">", 1, 0),
        ("Bad Tenant", None, "temp", ">", 1, 0),
    ]
    for args in bad:
        with pytest.raises(ValueError):
            alerts.create_rule(db, *args)  # type: ignore[arg-type]
    r1 = alerts.create_rule(db, "acme", "dev-1", "temp", ">=", 1, 0.5)
    r2 = alerts.create_rule(db, "globex", None, "temp", "<", 3, 0)
    assert [r["_id"] for r in rules.list_rules(db, "acme")] == [r1["_id"]]
    assert {r["_id"] for r in rules.list_rules(db, None)} == {r1["_id"], r2["_id"]}
    assert r1["enabled"] is True and r1["threshold"] == 1.0 and len(r1["_id"]) == 32
    assert rules.delete_rule(db, "globex", r1["_id"]) is False  # not globex's
    assert rules.delete_rule(db, "acme", r1["_id"]) is True
    assert rules.list_rules(db, "acme") == []
