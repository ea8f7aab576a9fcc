"""Day documents from hourly parts (pure): every writer's part of an hour merged, figures
packed and unpacked unchanged, ``n`` the day's readings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fairway.storage import rollup_days, rollups

DAY = datetime(2026, 2, 28, tzinfo=UTC)


def part(stream: str, hour: int, writer: str, values: list[float]) -> dict:
    fold = rollups.HourFold()
    for i, v in enumerate(values):
        fold.add(i, {"temp": v, "ok": True, "label": "x"})
    (hourly, _), *_ = rollups.hour_documents(
        "t", "d", DAY + timedelta(hours=hour), {stream: fold}, writer
    )
    return hourly


def test_parts_of_two_writers_merge_per_hour_and_stream() -> None:
    parts = [
        part("env", 3, "w1", [1, 5.5]),
        part("env", 3, "w2", [-2, 4]),
        part("env", 23, "w1", [7]),
        part("power", 3, "w1", [100]),
    ]
    docs = {d["stream"]: d for d in rollup_days.day_documents("t", "d", DAY, parts)}
    assert set(docs) == {"env", "power"}
    env = docs["env"]
    assert env["_id"] == "t:d:env:20260228" and env["mk"] == "t:d:202602" and env["n"] == 5
    assert env["dk"] == rollups.day_key("t", "d", DAY) and env["day"] == DAY
    assert set(env["metrics"]) == {"temp"}  # no figures for booleans and strings
    assert rollup_days.unpack(env["metrics"]["temp"]) == [
        (3, {"n": 4, "min": -2.0, "max": 5.5, "sum": 8.5}),
        (23, {"n": 1, "min": 7.0, "max": 7.0, "sum": 7.0}),
    ]
    assert docs["power"]["n"] == 1


def test_packing_keeps_float64_figures_exactly() -> None:
    points = [(0, {"n": 3, "min": -1e300, "max": 0.1, "sum": 2**53})]
    assert rollup_days.unpack(rollup_days.pack(points)) == points
