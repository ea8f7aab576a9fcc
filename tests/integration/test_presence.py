"""Device presence in the API: online from a connection or a recent stored reading, last
seen the later of the two (the dashboard and the device page read these answers)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from fairway.storage import accounts, device_state, mongo
from tests.harness import Pipeline, reading
from web import create_app

PASSWORD = "correct horse battery"


@pytest.mark.settings(device_online_window_s=60)
def test_online_from_connections_and_readings(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    for device in ("quiet", "reporting", "connected", "stale"):
        pipeline.device("acme", device)
    accounts.create_user(pipeline.db, "ada", PASSWORD, accounts.ADMIN, "acme")
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    token = accounts.create_api_token(pipeline.db, "ada", 3600)
    now = datetime.now(UTC)
    hour_ago = now - timedelta(hours=1)
    # What the monitor writes for a connection, and what the scheduler folds for readings.
    pipeline.db[mongo.DEVICES].update_one(
        {"_id": "connected"}, {"$set": {"online": True, "last_seen": hour_ago}}
    )
    pipeline.db[mongo.DEVICES].update_one({"_id": "stale"}, {"$set": {"last_seen": hour_ago}})
    deltas = device_state.fold(
        [
            {"_id": "acme:stale:s1", "stream": "env", "ts": now - timedelta(minutes=5),
             "values": {"temp": 1}},
        ]
    )  # fmt: skip
    device_state.apply(pipeline.db, deltas)

    # A reading through the real pipeline: stored, folded into device_state.
    pipeline.publish([("reporting.env", reading(time.time() - 5, temp=20.5), {})])
    pipeline.start("relay")
    pipeline.start("scheduler", device_state_flush_s=0)
    pipeline.wait_stored(1)

    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    listed = {d["device"]: d for d in client.get("/api/devices", headers=headers).json["devices"]}
    shown = {name: (d["online"], d["connected"], d["online_via"]) for name, d in listed.items()}
    assert shown == {
        "quiet": (False, False, None),
        "reporting": (True, False, "reading"),
        "connected": (True, True, "connection"),
        "stale": (False, False, None),
    }
    assert listed["quiet"]["last_seen"] is None
    assert listed["reporting"]["last_seen"] == listed["reporting"]["last_reading"]
    # Stale: last seen is its reading five minutes ago, later than its connection an hour ago.
    assert listed["stale"]["last_seen"] == listed["stale"]["last_reading"]
    assert listed["connected"]["last_seen"].startswith(hour_ago.strftime("%Y-%m-%dT%H:%M"))
    for name, entry in listed.items():  # the device page reads the same answer
        one = client.get(f"/api/devices/{name}", headers=headers).json
        assert (one["online"], one["last_seen"]) == (entry["online"], entry["last_seen"])
