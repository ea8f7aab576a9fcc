"""The sink's in-memory folds (``device_state.fold``, ``rollups.HourFold``) against
plain recomputations: the hot-path versions must say exactly what the slow rules say."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from fairway.storage import device_state
from fairway.storage.device_state import DeviceDelta, latest_entry
from fairway.storage.rollups import HourFold

T0 = datetime(2026, 12, 6, 5, tzinfo=UTC)


def readings(n: int, seed: int) -> list[dict[str, Any]]:
    """Stored-reading documents with repeated timestamps (ties broken by message id)."""
    rnd = random.Random(seed)
    return [
        {
            "tenant": "acme",
            "device": f"d{rnd.randrange(4)}",
            "stream": rnd.choice(["env", "power"]),
            "msg_id": f"m{rnd.randrange(1000):03d}",
            "ts": T0 + timedelta(seconds=rnd.randrange(30)),
            "values": {"t": rnd.choice([1, 2.5, -3, 0.0]), "ok": rnd.random() < 0.5, "s": "x"},
        }
        for _ in range(n)
    ]


def test_fold_equals_merging_one_reading_deltas_in_any_order() -> None:
    for seed in range(20):
        docs = readings(200, seed)
        want: dict[str, DeviceDelta] = {}
        for doc in docs:
            one = DeviceDelta(
                doc["tenant"], doc["ts"], doc["ts"], {doc["stream"]: latest_entry(doc)}
            )
            if doc["device"] in want:
                want[doc["device"]].merge(one)
            else:
                want[doc["device"]] = one
        random.Random(seed).shuffle(docs)
        assert device_state.fold(docs) == want


def test_hour_fold_counts_the_figures_it_adds_and_keeps_min_max_sum() -> None:
    docs = readings(300, 7)
    fold = HourFold()
    added = sum(fold.add(d["ts"].second % 5, d["values"]) for d in docs)
    figures = len(fold.metrics) + sum(len(m) for m in fold.minutes.values())
    assert added == figures == 1 + 5  # only "t" has figures (bool and str do not)
    values = [d["values"]["t"] for d in docs]
    t = fold.metrics["t"]
    assert (t["n"], t["min"], t["max"], t["sum"]) == (300, min(values), max(values), sum(values))
    assert fold.n == 300
    for minute, per in fold.minutes.items():
        mine = [d["values"]["t"] for d in docs if d["ts"].second % 5 == minute]
        assert (per["t"]["min"], per["t"]["max"], per["t"]["n"]) == (
            min(mine),
            max(mine),
            len(mine),
        )
