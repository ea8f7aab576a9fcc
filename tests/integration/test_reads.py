"""Reads bounded by what they return, on the real services: history by hour key over
the API (paging across hour edges, filters, the probe bound), and ``device_state`` as
maintained by the scheduler, checked against an independent fold of the stored readings,
before and after redeliveries."""

from __future__ import annotations

import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from fairway.kernel.contract import Reading, split_reading_id, tenant_message, to_document
from fairway.kernel.times import iso_z
from fairway.storage import accounts, device_state, mongo
from fairway.storage.telemetry import MAX_HOUR_PROBES, floor_hour
from tasks import rollup
from tests.harness import Pipeline, reading_query, wait_for
from tests.integration.rollup_figures import actual_rollups, expected_rollups
from web import create_app

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


def stored_doc(device: str, stream: str, mid: str, ts: datetime, v: int) -> dict[str, Any]:
    """The document the scheduler's sink writes for this reading."""
    reading = Reading(device, stream, mid, ts.timestamp(), {"v": v})
    doc = to_document(tenant_message("a", reading, ts.timestamp()))
    if v % 3 == 0:  # as stored before lean documents: history reads both shapes alike
        doc.update(tenant="a", device=device, msg_id=mid)
    return doc


@pytest.fixture
def api(pipeline: Pipeline) -> Any:
    pipeline.tenant("a")
    pipeline.device("a", "d1")
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    accounts.create_user(pipeline.db, "adm", "correct horse battery", accounts.ADMIN, "a")
    token = accounts.create_api_token(pipeline.db, "adm", 3600)
    client: FlaskClient = app.test_client()

    def get(path: str) -> Any:
        response = client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return get


def walk(api: Any, query: str, limit: int) -> tuple[list[str], int]:
    """Every reading id over all pages, and the number of pages."""
    ids: list[str] = []
    cursor, pages = None, 0
    while True:
        url = f"/api/devices/d1/telemetry?limit={limit}{query}"
        if cursor:
            url += "&cursor=" + urllib.parse.quote(cursor)
        page = api(url)
        pages += 1
        ids += [r["id"] for r in page["readings"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages


def newest_first(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(docs, key=lambda d: (d["ts"], d["_id"]), reverse=True)


def test_history_pages_across_hour_edges_exactly_once(pipeline: Pipeline, api: Any) -> None:
    docs, n = [], 0
    for hour in range(4):
        edge = T0 + timedelta(hours=hour)
        for offset_ms in (0, 1, 59 * 60_000, 3_600_000 - 1):
            for _ in range(3):  # three readings share each timestamp
                ts = edge + timedelta(milliseconds=offset_ms)
                docs.append(stored_doc("d1", "env" if n % 2 else "power", f"m{n:03d}", ts, n))
                n += 1
    pipeline.db[mongo.TELEMETRY].insert_many(docs)
    device_state.apply(pipeline.db, device_state.fold(docs))
    cases = [
        ("", docs),
        ("&stream=env", [d for d in docs if d["stream"] == "env"]),
        (
            f"&from={iso_z(T0 + timedelta(hours=1))}&to={iso_z(T0 + timedelta(hours=3))}",
            [d for d in docs if T0 + timedelta(hours=1) <= d["ts"] <= T0 + timedelta(hours=3)],
        ),
        (
            f"&stream=power&from={iso_z(T0 + timedelta(milliseconds=1))}",
            [d for d in docs if d["stream"] == "power" and d["ts"] > T0],
        ),
    ]
    for query, expected in cases:
        for limit in (1, 4, 5, 100):
            ids, _ = walk(api, query, limit)
            want = [split_reading_id(d["_id"])[2] for d in newest_first(expected)]
            assert ids == want, (query, limit)


def test_the_probe_bound_returns_a_cursor_that_continues_over_a_gap(
    pipeline: Pipeline, api: Any
) -> None:
    old = [stored_doc("d1", "env", f"old{i}", T0 + timedelta(seconds=i), i) for i in range(3)]
    gap = timedelta(hours=MAX_HOUR_PROBES + 30)
    new = [stored_doc("d1", "env", f"new{i}", T0 + gap + timedelta(seconds=i), i) for i in range(2)]
    pipeline.db[mongo.TELEMETRY].insert_many(old + new)
    device_state.apply(pipeline.db, device_state.fold(old + new))
    first = api("/api/devices/d1/telemetry?limit=10")
    assert [r["id"] for r in first["readings"]] == ["new1", "new0"]
    assert first["next_cursor"] is not None and first["next_cursor"].endswith("|")
    ids, pages = walk(api, "", 10)
    assert ids == ["new1", "new0", "old2", "old1", "old0"] and pages == 2


def expected_state(db: Any) -> dict[str, dict[str, Any]]:
    """An independent fold of the stored readings: device -> state."""
    out: dict[str, dict[str, Any]] = {}
    for doc in db[mongo.TELEMETRY].find():
        _tenant, device, message_id = split_reading_id(doc["_id"])
        state = out.setdefault(device, {"first_ts": doc["ts"], "last_ts": doc["ts"], "latest": {}})
        state["first_ts"] = min(state["first_ts"], doc["ts"])
        state["last_ts"] = max(state["last_ts"], doc["ts"])
        best = state["latest"].get(doc["stream"])
        if best is None or (doc["ts"], message_id) > (best["ts"], best["id"]):
            state["latest"][doc["stream"]] = {
                "ts": doc["ts"],
                "id": message_id,
                "values": doc["values"],
            }
    return out


def actual_state(db: Any) -> dict[str, dict[str, Any]]:
    return {
        d["_id"]: {k: d[k] for k in ("first_ts", "last_ts", "latest")}
        for d in db[mongo.DEVICE_STATE].find()
    }


@pytest.mark.settings(device_state_flush_s=0.5)
def test_device_state_equals_a_fold_of_the_stored_readings(pipeline: Pipeline, api: Any) -> None:
    for device in ("d2", "d3"):
        pipeline.device("a", device)
    pipeline.start("relay")
    pipeline.start("scheduler")
    edge = time.time() // 3600 * 3600  # readings on both sides of the current hour's start
    stamps = [edge - 7200.5, edge - 0.001, edge, edge + 0.25]  # + 0.25: within the skew
    messages = []
    for i, ts in enumerate(stamps * 3):  # out of order across devices, shared stamps
        device = ("d1", "d2", "d3")[i % 3]
        stream = "env" if i % 2 else "power"
        body = {"ts": ts, "values": {"v": i}}
        messages.append((f"{device}.{stream}", body, {"message_id": f"m{i:02d}"}))
    messages.reverse()  # newest first: latest must not roll back to older readings
    pipeline.publish(messages)
    pipeline.wait_stored(len(messages))
    wait_for(lambda: actual_state(pipeline.db) == expected_state(pipeline.db), 15, "state")

    # Redelivered duplicates (older readings among them) change nothing ...
    pipeline.publish(messages[::-1])
    wait_for(
        lambda: (
            pipeline.metric("scheduler", "fairway_scheduler_duplicates_total", tenant="a")
            >= len(messages)
        ),
        30,
        "duplicates",
    )
    time.sleep(1.5)  # past a flush
    assert actual_state(pipeline.db) == expected_state(pipeline.db)
    # ... and the state is rebuilt from them when it was lost.
    pipeline.db[mongo.DEVICE_STATE].delete_many({})
    pipeline.publish(messages)
    wait_for(lambda: actual_state(pipeline.db) == expected_state(pipeline.db), 15, "rebuilt")

    # The device API answers latest values and the last reading from device_state.
    expected = expected_state(pipeline.db)["d1"]
    one = api("/api/devices/d1")
    assert one["last_reading"] == iso_z(expected["last_ts"])
    assert one["latest"] == {
        stream: {"ts": iso_z(e["ts"]), "id": e["id"], "values": e["values"]}
        for stream, e in sorted(expected["latest"].items())
    }
    listed = {d["device"]: d for d in api("/api/devices")["devices"]}
    assert listed["d1"]["latest"] == one["latest"] and set(listed) == {"d1", "d2", "d3"}
    history = api("/api/devices/d1/telemetry?limit=100")["readings"]
    assert len(history) == pipeline.stored(device="d1")


def test_rollups_equal_the_raw_readings_after_redelivery_and_late_data(
    pipeline: Pipeline, api: Any
) -> None:
    pipeline.device("a", "d2")
    pipeline.start("relay")
    # Grace 0: the hour before the open one is closed for the scheduler's fold whatever
    # the minute, so the closed hours go to the rollup task and the open one is folded.
    pipeline.start("scheduler", rollup_flush_grace_s=0)
    if 3600 - time.time() % 3600 < 60:  # the open hour must stay open during the test
        time.sleep(3600 - time.time() % 3600 + 1)
    now = time.time()
    current = now // 3600 * 3600
    messages, n = [], 0
    for hours_back in (3, 2, 1, 0):  # three closed hours and the open one
        for offset in (0.0, 59.999, 1800.25, 3599.999):
            ts = current - 3600 * hours_back + offset
            if ts > now + 60:
                continue
            for device in ("d1", "d2"):
                env = {"temp": n * 0.5, "ok": n % 2 == 0, "label": "x", "count": n}
                for stream, values in (("env", env), ("power", {"watts": n * 2.25})):
                    body = {"ts": ts, "values": values}
                    messages.append((f"{device}.{stream}", body, {"message_id": f"m{n}"}))
                    n += 1
    pipeline.publish(messages)
    pipeline.wait_stored(len(messages))
    opened = datetime.fromtimestamp(current, UTC)
    # Closed hours are marked for the rollup task; the open one is folded in memory and
    # recorded (rollup_touched) before its readings were acked, not marked.
    marks = {m["_id"] for m in pipeline.db[mongo.ROLLUP_PENDING].find()}
    hours = [opened - timedelta(hours=h) for h in range(1, 4)]
    assert marks == {f"a:{d}:{h:%Y%m%d%H}" for d in ("d1", "d2") for h in hours}
    touched = list(pipeline.db[mongo.ROLLUP_TOUCHED].find())
    assert {(t["hour"], d) for t in touched for d in t["devices"]} == {
        (opened, "d1"),
        (opened, "d2"),
    }

    result = rollup.roll_closed_hours(pipeline.db, grace_s=0)
    assert (result["computed"], result["kept"], result["lost_writers"]) == (6, 0, 0)
    assert not list(pipeline.db[mongo.ROLLUP_PENDING].find())
    assert actual_rollups(pipeline.db) == expected_rollups(pipeline.db, opened)

    # Redelivered readings and late data in a closed hour: marked again, recomputed, exact.
    late_ts = current - 2 * 3600 + 10.5
    late = [("d1.env", {"ts": late_ts, "values": {"temp": 99.5}}, {"message_id": "late"})]
    pipeline.publish(messages[: len(messages) // 2] + late)
    pipeline.wait_stored(len(messages) + 1)
    wait_for(
        lambda: (
            pipeline.metric("scheduler", "fairway_scheduler_duplicates_total", tenant="a")
            >= len(messages) // 2
        ),
        30,
        "duplicates",
    )
    rollup.roll_closed_hours(pipeline.db, grace_s=0)
    assert actual_rollups(pipeline.db) == expected_rollups(pipeline.db, opened)

    # The chart: raw readings up to 3 hours, minutes up to 2 days, hours beyond, same figures.
    first = opened - timedelta(hours=3)
    raw = api(f"/api/devices/d1/series?metric=temp&from={iso_z(first)}&to={iso_z(opened)}")
    stored = sorted(
        (d["ts"], d["values"]["temp"])
        for d in pipeline.db[mongo.TELEMETRY].find(reading_query(device="d1", stream="env"))
        if first <= d["ts"] <= opened
    )
    assert raw["resolution"] == "raw"
    assert raw["points"] == [[iso_z(t), v] for t, v in stored]
    month = api(
        f"/api/devices/d1/series?metric=temp&stream=env&from={iso_z(opened - timedelta(days=30))}"
        f"&to={iso_z(opened - timedelta(seconds=1))}"
    )
    expected = expected_rollups(pipeline.db, opened)
    want = []
    for h in (3, 2, 1):
        hour = opened - timedelta(hours=h)
        m = expected[f"a:d1:env:{hour:%Y%m%d%H}"]["metrics"]["temp"]
        want.append(
            {
                "t": iso_z(hour),
                "n": m["n"],
                "min": m["min"],
                "max": m["max"],
                "mean": m["sum"] / m["n"],
            }
        )
    assert month["resolution"] == "hour" and month["points"] == want
    day = api(
        f"/api/devices/d1/series?metric=temp&stream=env&from={iso_z(opened - timedelta(days=1))}"
        f"&to={iso_z(opened - timedelta(seconds=1))}"
    )
    want = []
    for h in (3, 2, 1):
        hour = opened - timedelta(hours=h)
        minutes = expected[f"a:d1:env:{hour:%Y%m%d%H}"]["minutes"]
        for minute in sorted(minutes):
            m = minutes[minute]["temp"]
            at = hour + timedelta(minutes=int(minute))
            want.append(
                {
                    "t": iso_z(at),
                    "n": m["n"],
                    "min": m["min"],
                    "max": m["max"],
                    "mean": m["sum"] / m["n"],
                }
            )
    assert day["resolution"] == "minute" and day["points"] == want

    # The open hour has no rollup yet: a chart up to now folds it from the raw readings.
    everything = expected_rollups(pipeline.db, opened + timedelta(hours=1))
    live = api(
        f"/api/devices/d1/series?metric=temp&stream=env&from={iso_z(opened - timedelta(hours=5))}"
        f"&to={iso_z(datetime.now(UTC) + timedelta(minutes=2))}"
    )
    assert live["resolution"] == "minute"
    assert live["points"][: len(want)] == want
    opened_minutes = everything[f"a:d1:env:{opened:%Y%m%d%H}"]["minutes"]
    assert [p["t"] for p in live["points"][len(want) :]] == [
        iso_z(opened + timedelta(minutes=int(m))) for m in sorted(opened_minutes)
    ]

    # A clean stop leaves the open hour to the rollup task, which recomputes it (from
    # the readings, by writer) once it has closed.
    assert pipeline.stop("scheduler") == 0
    closed = opened + timedelta(hours=1)
    result = rollup.roll_closed_hours(pipeline.db, grace_s=0, now=closed + timedelta(seconds=1))
    assert (result["lost_writers"], result["computed"]) == (1, 2)
    # Counted per record and device: writer threads' concurrent first batches may each
    # record the open hour of d1 and d2 (a batch is acked only after its own record).
    assert result["recovered_hours"] >= 2
    assert actual_rollups(pipeline.db) == expected_rollups(pipeline.db, closed)


# Bundles of 10 and one writer with batches of 10: a scheduler slow enough that the first
# two are killed mid-run (a pooled scheduler with bundles of 50 stored all 3,000 before
# the first kill, and the second then waited for progress in vain: a full run).
@pytest.mark.settings(device_state_flush_s=0.5, bundle_max_readings=10)
def test_rollups_and_state_are_exact_after_kill_9_of_the_scheduler(
    pipeline: Pipeline, api: Any
) -> None:
    devices = [f"k{i}" for i in range(5)]
    for device in devices:
        pipeline.device("a", device)
    pipeline.start("relay")
    now = time.time()
    current = now // 3600 * 3600
    messages = []
    # Three closed hours, oldest first; every 7th in the open hour (all five devices).
    for i in range(3000):
        ts = current - 3 * 3600 + i * 3.5 + 0.25
        if i % 7 == 6:
            ts = current + (now - current) * i / 3000
        body = {"ts": ts, "values": {"temp": (i % 50) * 0.5}}
        messages.append((f"{devices[i % 5]}.env", body, {"message_id": f"m{i}"}))
    pipeline.publish(messages)
    wait_for(  # every reading in tenant.a (in bundles: count readings, not messages)
        lambda: (
            pipeline.metric("relay", "fairway_relay_accepted_total", tenant="a") >= len(messages)
        ),
        60,
        "relayed",
    )
    # Each killed scheduler leaves readings of the open hour folded but never written
    # (its rollup_touched records say which device-hours).
    for _ in range(2):  # kill -9 twice mid-run; unacked batches come back as duplicates
        stored = pipeline.stored()
        pipeline.start("scheduler", batch_size=10, batch_max=10, writers=1)
        wait_for(lambda s=stored: pipeline.stored() >= s + 400, 60, "progress")
        pipeline.kill("scheduler")
    pipeline.start("scheduler", batch_size=50)
    pipeline.wait_stored(len(messages), timeout=120)
    # A kill -9 loses at most the throttled state of what was acked in the last flush
    # interval; each device's next reading repairs it (the hour range is never behind).
    # "Next" in time: newer than every reading above (a killed scheduler may have acked
    # the newest, then lost its state; CI saw it), still in the open hour and within the
    # relay's clock skew.
    newest = now + min(1.0, (current + 3600 - now) / 2)
    fresh = [
        (f"{device}.env", {"ts": newest + i * 1e-4, "values": {"temp": 1.5}}, {"message_id": "f"})
        for i, device in enumerate(devices)
    ]
    pipeline.publish(fresh)
    pipeline.wait_stored(len(messages) + len(fresh), timeout=60)

    def guaranteed(state: dict[str, dict[str, Any]]) -> dict[str, Any]:
        # Exact after a kill -9: last_ts and latest (repaired by the fresh readings) and
        # the first *hour*; first_ts within that hour may keep a later value.
        return {k: (v["last_ts"], v["latest"], floor_hour(v["first_ts"])) for k, v in state.items()}

    wait_for(
        lambda: guaranteed(actual_state(pipeline.db)) == guaranteed(expected_state(pipeline.db)),
        15,
        "state",
    )
    # Once the open hour has closed and the killed writers' leases ran out, the rollup
    # task recomputes what they folded (the live scheduler's lease too, at that clock).
    opened = datetime.fromtimestamp(current, UTC)
    # Late enough for the leases too: run in an hour's last minutes, the writers' last
    # beats are still within a lease of the hour's end.
    lease_s = 300
    later = max(
        opened + timedelta(hours=1, seconds=1),
        datetime.now(UTC) + timedelta(seconds=lease_s + 1),
    )
    result = rollup.roll_closed_hours(pipeline.db, grace_s=0, lease_s=lease_s, now=later)
    # Three writers lost. The first one's records name the open hour of all five devices
    # (it stored 400 readings, every 7th of them in that hour, and saw no duplicates);
    # later writers may have handed a device-hour over on a redelivered duplicate
    # instead (a mark, no record), and closed hours are marked, never folded.
    assert result["lost_writers"] == 3 and result["recovered_hours"] >= 5
    expected = expected_rollups(pipeline.db, later)
    assert sum(r["n"] for r in expected.values()) == len(messages) + len(fresh)
    assert actual_rollups(pipeline.db) == expected
