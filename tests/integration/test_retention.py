"""Retention by hour key and the ``hk`` backfill, on the real database.

Retention must leave exactly the readings inside each tenant's plan (hour edges, the
cutoff's hour, plans that differ), remove the rollups, per-minute rollups and rollup
marks of deleted hours, move ``device_state.first_ts`` up, and leave history returning
exactly what is kept; a run bounded or killed part-way is finished by the next. The
backfill makes readings stored without ``hk`` visible to history and rollups, once.
"""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from fairway.cli import main as cli
from fairway.kernel.contract import Reading, split_reading_id, tenant_message, to_document
from fairway.storage import accounts, backfill, device_state, mongo, registry, rollups
from fairway.storage.telemetry import HistoryQuery, floor_hour, read_history
from tasks import retention, rollup
from tests.harness import Pipeline
from tests.integration.test_reads import actual_rollups, expected_rollups
from web import create_app

NOW = datetime(2026, 12, 10, 12, 30, 15, 250_000, tzinfo=UTC)
MS = timedelta(milliseconds=1)
H = timedelta(hours=1)
PLANS = {"a": 1, "b": None}  # days; None: the default
DEFAULT_DAYS = 2


def cutoff_of(tenant: str) -> datetime:
    return NOW - timedelta(days=PLANS[tenant] or DEFAULT_DAYS)


def stored(tenant: str, device: str, i: int, ts: datetime) -> dict[str, Any]:
    """The document the scheduler's sink writes (with ``hk``)."""
    stream = "env" if i % 3 else "power"
    reading = Reading(device, stream, f"m{i:05d}", ts.timestamp(), {"v": i, "w": i * 0.5})
    doc = to_document(tenant_message(tenant, reading, ts.timestamp()))
    if i % 4 == 0:  # as stored before lean documents: old readings stay as they are
        doc.update(tenant=tenant, device=device, msg_id=reading.message_id)
    return doc


def tenant_of(doc: dict[str, Any]) -> str:
    return split_reading_id(doc["_id"])[0]


def device_of(doc: dict[str, Any]) -> str:
    return split_reading_id(doc["_id"])[1]


def times_around(cutoff: datetime) -> list[datetime]:
    """Readings every 47 minutes from 30 hours before the cutoff to 8 hours after it,
    then every 5 hours to NOW, and on every edge of the cutoff and of its hour."""
    edge = floor_hour(cutoff)
    exact = [edge - H, edge - MS, edge, cutoff - MS, cutoff, cutoff + MS, edge + H - MS, edge + H]
    spread, t = [], cutoff - timedelta(hours=30)
    while t <= NOW:
        spread.append(t)
        t += timedelta(minutes=47 if t < cutoff + timedelta(hours=8) else 300)
    return sorted(set(exact + spread))


def store(db: Any, docs: list[dict[str, Any]]) -> None:
    """What the pipeline leaves: readings, device state, rollup marks."""
    db[mongo.TELEMETRY].insert_many(docs)
    device_state.apply(db, device_state.fold(docs))
    rollups.mark_pending(db, {(tenant_of(d), device_of(d), floor_hour(d["ts"])) for d in docs})


@pytest.fixture
def fleet(pipeline: Pipeline) -> dict[str, list[dict[str, Any]]]:
    """Tenants a (2 days) and b (default 5) with devices; every reading, by device.

    a-old has only readings older than its plan; b-new only readings inside it."""
    db = pipeline.db
    for tenant, days in PLANS.items():
        pipeline.tenant(tenant)
        if days:
            registry.update_tenant(db, tenant, {"retention_days": days})
    by_device: dict[str, list[dict[str, Any]]] = {}
    devices = [("a", "a-1"), ("a", "a-2"), ("a", "a-old"), ("b", "b-1"), ("b", "b-new")]
    for tenant, device in devices:
        pipeline.device(tenant, device)
        cutoff = cutoff_of(tenant)
        times = times_around(cutoff)
        if device == "a-old":
            times = [t for t in times if t < cutoff - timedelta(hours=5)]
        if device == "b-new":
            times = [t for t in times if t >= cutoff + timedelta(hours=3)]
        by_device[device] = [stored(tenant, device, i, t) for i, t in enumerate(times)]
        store(db, by_device[device])
    # Rollups of every closed hour, as the rollup task leaves them; one hour left marked.
    rollup.roll_closed_hours(db, 0, now=NOW)
    rollups.mark_pending(db, [("a", "a-1", floor_hour(cutoff_of("a") - timedelta(days=1)))])
    return by_device


def kept(by_device: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """The readings a plan keeps: ``ts >= cutoff``, by device, newest first."""
    out = {}
    for device, docs in by_device.items():
        cutoff = cutoff_of(tenant_of(docs[0]))
        keep = [d for d in docs if d["ts"] >= cutoff]
        out[device] = [d["_id"] for d in sorted(keep, key=lambda d: (d["ts"], d["_id"]))][::-1]
    return out


def stored_ids(db: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for doc in db[mongo.TELEMETRY].find():
        out.setdefault(device_of(doc), []).append(doc)
    return {
        device: [d["_id"] for d in sorted(docs, key=lambda d: (d["ts"], d["_id"]))][::-1]
        for device, docs in out.items()
    }


def history(db: Any, tenant: str, device: str) -> list[str]:
    """Every reading history returns for the device, over all pages."""
    ids: list[str] = []
    query = HistoryQuery(tenant, device, 7)
    while True:
        page = read_history(db, query)
        ids += [d["_id"] for d in page.docs]
        if page.next_cursor is None:
            return ids
        query = HistoryQuery(tenant, device, 7, cursor=page.next_cursor)


def run(db: Any, max_hours: int = 100_000, progress: Any = None) -> dict[str, Any]:
    return retention.apply_retention(
        db, DEFAULT_DAYS, 86400.0, NOW, progress or (lambda done, total: None), max_hours
    )


def assert_exactly_the_plan(db: Any, by_device: dict[str, list[dict[str, Any]]]) -> None:
    expected = kept(by_device)
    assert stored_ids(db) == {d: ids for d, ids in expected.items() if ids}
    for device, ids in expected.items():
        tenant = tenant_of(by_device[device][0])
        assert history(db, tenant, device) == ids, device
        state = device_state.get(db, device)
        assert state is not None
        if ids:
            assert state["first_ts"] == cutoff_of(tenant) or device == "b-new"
            assert state["first_ts"] <= min(d["ts"] for d in by_device[device] if d["_id"] in ids)
        else:
            assert "first_ts" not in state and state["last_ts"] < cutoff_of(tenant)
    # Rollups: those of the hours kept, equal to the readings kept (the cutoff's hour
    # recomputed from what is left), none of a deleted hour.
    assert actual_rollups(db) == expected_rollups(db, floor_hour(NOW))
    for mark in db[mongo.ROLLUP_PENDING].find():
        tenant = mark["_id"].split(":")[0]
        assert mark["hour"] >= floor_hour(cutoff_of(tenant)), mark


def test_retention_leaves_exactly_the_readings_inside_each_plan(
    pipeline: Pipeline, fleet: dict[str, list[dict[str, Any]]]
) -> None:
    db = pipeline.db
    before = {d: len(docs) for d, docs in fleet.items()}
    calls: list[tuple[int, int]] = []
    result = run(db, progress=lambda done, total: calls.append((done, total)))
    assert_exactly_the_plan(db, fleet)
    expect_deleted = {"a": 0, "b": 0}
    for device, ids in kept(fleet).items():
        expect_deleted[tenant_of(fleet[device][0])] += before[device] - len(ids)
    assert result["documents_deleted"] == expect_deleted
    assert result["hours_left"] == 0 and result["devices_behind"] == 0
    assert calls[0] == (0, result["hours_deleted"]) and calls[-1][0] == result["hours_deleted"]
    # b-new has nothing expired: its first_ts did not move, no hour of it was visited.
    assert device_state.get(db, "b-new")["first_ts"] == fleet["b-new"][0]["ts"]
    # A second run deletes nothing more and changes nothing.
    snapshot = stored_ids(db), actual_rollups(db)
    again = run(db)
    assert again["documents_deleted"] == {"a": 0, "b": 0}
    assert (stored_ids(db), actual_rollups(db)) == snapshot
    # An hour later, the next hour goes, exactly.
    later = retention.apply_retention(db, DEFAULT_DAYS, 86400.0, NOW + H, lambda d, t: None, 10**5)
    cut = cutoff_of("a") + H
    assert all(d["ts"] >= cut for d in db[mongo.TELEMETRY].find() if tenant_of(d) == "a")
    now_expired = [d for docs in fleet.values() for d in docs if cut - H <= d["ts"] < cut]
    assert later["documents_deleted"]["a"] == sum(1 for d in now_expired if tenant_of(d) == "a")


def test_history_api_returns_exactly_the_kept_readings(
    pipeline: Pipeline, fleet: dict[str, list[dict[str, Any]]]
) -> None:
    run(pipeline.db)
    app = create_app({"FAIRWAY_SETTINGS": pipeline.settings, "TESTING": True})
    accounts.create_user(pipeline.db, "adm", "correct horse battery", accounts.ADMIN, "a")
    token = accounts.create_api_token(pipeline.db, "adm", 3600)
    client: FlaskClient = app.test_client()
    for device in ("a-1", "a-old"):
        ids, cursor = [], None
        while True:
            url = f"/api/devices/{device}/telemetry?limit=9"
            if cursor:
                url += "&cursor=" + urllib.parse.quote(cursor)
            page = client.get(url, headers={"Authorization": f"Bearer {token}"}).get_json()
            ids += [f"a:{device}:{r['id']}" for r in page["readings"]]
            if (cursor := page["next_cursor"]) is None:
                break
        assert ids == kept(fleet)[device]


def test_a_bounded_run_is_finished_by_the_next(
    pipeline: Pipeline, fleet: dict[str, list[dict[str, Any]]]
) -> None:
    db = pipeline.db
    runs, left = [], None
    while left != 0:
        result = run(db, max_hours=17)
        assert result["hours_deleted"] <= 17
        runs.append(result)
        left = result["hours_left"]
        assert len(runs) < 100
    # About 31 hours of a-1, a-2, b-1 and 25 of a-old, shared fairly: several runs.
    assert len(runs) >= 7
    assert_exactly_the_plan(db, fleet)


def test_a_run_killed_mid_way_is_finished_by_the_next(
    pipeline: Pipeline, fleet: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = pipeline.db
    real_delete_hour, real_by_day = retention.delete_hour, rollups.delete_day_before

    class Killed(Exception):
        pass

    def killed_at(kill_at: int) -> Any:
        calls = 0

        def delete_hour(*args: Any, **kwargs: Any) -> int:
            nonlocal calls
            calls += 1
            if calls == kill_at:
                raise Killed
            return real_delete_hour(*args, **kwargs)

        return delete_hour

    for kill_at in (5, 30, 40):  # the nth hour delete of a run
        monkeypatch.setattr(retention, "delete_hour", killed_at(kill_at))
        with pytest.raises(Killed):
            run(db)
    # Killed after a day's readings went, before its rollups did.
    monkeypatch.setattr(retention, "delete_hour", real_delete_hour)

    def delete_day_before(*args: Any) -> int:
        raise Killed

    monkeypatch.setattr(rollups, "delete_day_before", delete_day_before)
    with pytest.raises(Killed):
        run(db)
    monkeypatch.setattr(rollups, "delete_day_before", real_by_day)
    run(db)
    assert_exactly_the_plan(db, fleet)


# -- backfill of hk ----------------------------------------------------------------------
def old_style(doc: dict[str, Any]) -> dict[str, Any]:
    """A reading as stored before hour keys: no ``hk``."""
    return {k: v for k, v in doc.items() if k != "hk"}


def test_backfill_makes_old_readings_visible_and_rollups_exact(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = pipeline.db
    pipeline.tenant("a")
    pipeline.device("a", "d1")
    pipeline.device("a", "d2")
    start = NOW - timedelta(days=2)
    old = [stored("a", "d1", i, start + timedelta(minutes=13 * i)) for i in range(200)]
    old += [stored("a", "d2", 1000 + i, start + timedelta(minutes=29 * i)) for i in range(50)]
    new = [stored("a", "d1", 5000 + i, NOW - timedelta(minutes=7 * i)) for i in range(20)]
    db[mongo.TELEMETRY].insert_many([old_style(d) for d in old])  # no hk, no state, no mark
    store(db, new)
    assert history(db, "a", "d1") == [d["_id"] for d in new]
    assert history(db, "a", "d2") == []

    # Interrupted after the keys of the second batch are set, before their marks.
    real_mark, marks = rollups.mark_pending, 0

    def mark_pending(*args: Any) -> None:
        nonlocal marks
        marks += 1
        if marks == 2:
            raise RuntimeError("killed")
        real_mark(*args)

    monkeypatch.setattr(rollups, "mark_pending", mark_pending)
    with pytest.raises(RuntimeError):
        backfill.backfill_hour_keys(db, batch_size=40)
    monkeypatch.setattr(rollups, "mark_pending", real_mark)
    # Meanwhile the rollup task computes what it was told about (not the whole hours).
    rollup.roll_closed_hours(db, 0, now=NOW)

    totals: list[dict[str, int]] = []
    first = backfill.backfill_hour_keys(db, batch_size=40, report=totals.append)
    assert first["replayed"] > 0 and first["readings"] == 250 - 80 and first["passes"] == 2
    assert totals[-1]["readings"] == first["readings"]
    assert db[mongo.TELEMETRY].count_documents({"hk": {"$exists": False}}) == 0
    everything = old + new
    newest_first = sorted(everything, key=lambda d: (d["ts"], d["_id"]), reverse=True)
    for device in ("d1", "d2"):
        assert history(db, "a", device) == [
            d["_id"] for d in newest_first if device_of(d) == device
        ]
        state = device_state.get(db, device)
        assert state is not None
        mine = [d for d in everything if device_of(d) == device]
        assert state["first_ts"] == min(d["ts"] for d in mine)
        assert state["last_ts"] == max(d["ts"] for d in mine)
    assert {d["_id"]: d["hk"] for d in db[mongo.TELEMETRY].find()} == {
        d["_id"]: d["hk"] for d in everything
    }
    rollup.roll_closed_hours(db, 0, now=NOW)
    assert actual_rollups(db) == expected_rollups(db, floor_hour(NOW))

    # A second run (here through the command) changes nothing.
    def snapshot() -> Any:
        return [
            sorted(db[c].find(), key=lambda d: d["_id"])
            for c in (mongo.TELEMETRY, mongo.DEVICE_STATE, mongo.ROLLUPS, mongo.ROLLUP_MINUTES)
        ] + [sorted(m["_id"] for m in db[mongo.ROLLUP_PENDING].find())]

    before = snapshot()
    result = CliRunner().invoke(
        cli, ["migrate", "backfill-hk"], env=pipeline.settings.environ(), catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert '"readings": 0' in result.stdout and '"passes": 1' in result.stdout
    assert snapshot() == before
    assert db[mongo.MIGRATIONS].count_documents({}) == 0


def test_retention_removes_backfilled_readings_in_time(pipeline: Pipeline) -> None:
    db = pipeline.db
    pipeline.tenant("a")
    registry.update_tenant(db, "a", {"retention_days": PLANS["a"]})
    cutoff = cutoff_of("a")
    docs = [stored("a", "d1", i, cutoff - timedelta(hours=30) + i * 10 * MS * 60_000)
            for i in range(400)]  # fmt: skip
    db[mongo.TELEMETRY].insert_many([old_style(d) for d in docs])
    run(db)  # without hk: retention does not see them
    assert db[mongo.TELEMETRY].count_documents({}) == len(docs)
    backfill.backfill_hour_keys(db)
    run(db)
    assert sorted(d["_id"] for d in db[mongo.TELEMETRY].find()) == sorted(
        d["_id"] for d in docs if d["ts"] >= cutoff
    )
