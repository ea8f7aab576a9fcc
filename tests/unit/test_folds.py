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


def readings(n: int, seed: int, old_shape: bool = False) -> list[dict[str, Any]]:
    """Stored-reading documents with repeated timestamps (ties broken by message id):
    lean (tenant, device and message id in ``_id`` only), or as written before that."""
    rnd = random.Random(seed)
    docs = []
    for i in range(n):
        # unique ids (a ':' in them too): equal (ts, id) with other values has no order
        device, mid = f"d{rnd.randrange(4)}", f"m:{rnd.randrange(1000):03d}:{i}"
        doc: dict[str, Any] = {
            "_id": f"acme:{device}:{mid}",
            "stream": rnd.choice(["env", "power"]),
            "ts": T0 + timedelta(seconds=rnd.randrange(30)),
            "values": {"t": rnd.choice([1, 2.5, -3, 0.0]), "ok": rnd.random() < 0.5, "s": "x"},
        }
        if old_shape:
            doc.update(tenant="acme", device=device, msg_id=mid)
        docs.append(doc)
    return docs


def test_fold_equals_merging_one_reading_deltas_in_any_order() -> None:
    for seed in range(20):
        docs = readings(200, seed)
        want: dict[str, DeviceDelta] = {}
        for doc in docs:
            tenant, device, mid = doc["_id"].split(":", 2)
            entry = {"ts": doc["ts"], "id": mid, "values": doc["values"]}
            assert latest_entry(doc) == entry and list(latest_entry(doc)) == ["ts", "id", "values"]
            one = DeviceDelta(tenant, doc["ts"], doc["ts"], {doc["stream"]: entry})
            if device in want:
                want[device].merge(one)
            else:
                want[device] = one
        random.Random(seed).shuffle(docs)
        assert device_state.fold(docs) == want


def test_fold_reads_both_document_shapes_alike() -> None:
    for seed in range(5):
        lean, old = readings(100, seed), readings(100, seed, old_shape=True)
        assert "device" not in lean[0] and old[0]["device"] == old[0]["_id"].split(":")[1]
        assert device_state.fold(lean) == device_state.fold(old)
        # and mixed: old documents stay as they are next to lean ones
        mixed = old[:50] + lean[50:]
        assert device_state.fold(mixed) == device_state.fold(lean)
        # and the writer's fold, given the parts each _id was built from (the old
        # shape's fields), not parsing _id
        written = [
            ((o["tenant"], o["device"], o["msg_id"]), d) for o, d in zip(old, lean, strict=True)
        ]
        assert device_state.fold_written(written) == device_state.fold(lean)


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
