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

from fairway.kernel.contract import Reading, tenant_message, to_document
from fairway.kernel.times import iso_z
from fairway.storage import accounts, device_state, mongo
from fairway.storage.telemetry import MAX_HOUR_PROBES
from tests.harness import Pipeline, wait_for
from web import create_app

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


def stored_doc(device: str, stream: str, mid: str, ts: datetime, v: int) -> dict[str, Any]:
    """The document the scheduler's sink writes for this reading."""
    reading = Reading(device, stream, mid, ts.timestamp(), {"v": v})
    return to_document(tenant_message("a", reading, ts.timestamp()))


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
            assert ids == [d["msg_id"] for d in newest_first(expected)], (query, limit)


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
        state = out.setdefault(
            doc["device"], {"first_ts": doc["ts"], "last_ts": doc["ts"], "latest": {}}
        )
        state["first_ts"] = min(state["first_ts"], doc["ts"])
        state["last_ts"] = max(state["last_ts"], doc["ts"])
        best = state["latest"].get(doc["stream"])
        if best is None or (doc["ts"], doc["msg_id"]) > (best["ts"], best["id"]):
            state["latest"][doc["stream"]] = {
                "ts": doc["ts"],
                "id": doc["msg_id"],
                "values": doc["values"],
            }
    return out


def actual_state(db: Any) -> dict[str, dict[str, Any]]:
    return {
        d["_id"]: {k: d[k] for k in ("first_ts", "last_ts", "latest")}
        for d in db[device_state.DEVICE_STATE].find()
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
    pipeline.db[device_state.DEVICE_STATE].delete_many({})
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
