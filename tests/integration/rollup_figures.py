"""Rollups as stored (parts of every writer merged) and as computed independently from
the raw readings, in one shape, for tests to compare."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fairway.kernel.contract import split_reading_id
from fairway.storage import mongo
from tests.harness import stored_readings


def _add(acc: dict[str, Any], metric: str, value: float) -> None:
    m = acc.setdefault(metric, {"n": 0, "min": value, "max": value, "sum": 0})
    m["n"] += 1
    m["min"], m["max"] = min(m["min"], value), max(m["max"], value)
    m["sum"] += value


def _merge(acc: dict[str, Any], metric: str, s: dict[str, Any]) -> None:
    m = acc.get(metric)
    if m is None:
        acc[metric] = dict(s)
    else:
        m["n"] += s["n"]
        m["min"], m["max"] = min(m["min"], s["min"]), max(m["max"], s["max"])
        m["sum"] += s["sum"]


def expected_rollups(
    db: Any, closed_before: datetime, since: datetime | None = None
) -> dict[str, dict[str, Any]]:
    """An independent computation from the raw readings of every hour before
    ``closed_before`` (and from ``since``), keyed ``tenant:device:stream:YYYYMMDDHH``."""
    out: dict[str, dict[str, Any]] = {}
    for doc in stored_readings(db):  # device batches' readings too
        hour = doc["ts"].replace(minute=0, second=0, microsecond=0)
        if hour >= closed_before or (since is not None and hour < since):
            continue
        tenant, device, _ = split_reading_id(doc["_id"])
        key = f"{tenant}:{device}:{doc['stream']}:{hour:%Y%m%d%H}"
        roll = out.setdefault(key, {"n": 0, "metrics": {}, "minutes": {}})
        roll["n"] += 1
        for metric, value in doc["values"].items():
            if type(value) in (int, float):
                _add(roll["metrics"], metric, value)
                _add(roll["minutes"].setdefault(f"{doc['ts'].minute:02d}", {}), metric, value)
    return out


def actual_rollups(db: Any) -> dict[str, dict[str, Any]]:
    """The stored hourly and per-minute documents, every writer's parts of an hour merged,
    in the shape of :func:`expected_rollups`."""
    minutes = {r["_id"]: r for r in db[mongo.ROLLUP_MINUTES].find()}
    out: dict[str, dict[str, Any]] = {}
    for r in db[mongo.ROLLUPS].find():
        assert r["_id"] in minutes, f"{r['_id']} has no minutes"
        assert minutes[r["_id"]]["n"] == r["n"]
        key = r["_id"].split("/")[0]
        roll = out.setdefault(key, {"n": 0, "metrics": {}, "minutes": {}})
        roll["n"] += r["n"]
        for metric, s in r["metrics"].items():
            _merge(roll["metrics"], metric, s)
        for metric, col in minutes[r["_id"]]["metrics"].items():
            for i, minute in enumerate(col["m"]):
                stats = {k: col[k][i] for k in ("n", "min", "max", "sum")}
                _merge(roll["minutes"].setdefault(f"{minute:02d}", {}), metric, stats)
    assert {m.split("/")[0] for m in minutes} <= set(out)
    return out


def rounded(rollups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``rollups`` with every sum rounded to 9 places (merged parts add in another order)."""

    def stats(s: dict[str, Any]) -> dict[str, Any]:
        return {**s, "sum": round(s["sum"], 9)}

    return {
        key: {
            "n": r["n"],
            "metrics": {m: stats(s) for m, s in r["metrics"].items()},
            "minutes": {
                minute: {m: stats(s) for m, s in per.items()}
                for minute, per in r["minutes"].items()
            },
        }
        for key, r in rollups.items()
    }
