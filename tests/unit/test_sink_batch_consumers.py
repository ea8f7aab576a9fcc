"""A stored batch document reaches the sink's consumers as one entry (tenant, device,
stream, receipt time, its readings), not one view per reading: the rollup folder, the
device state fold and the lag histogram must make of it exactly what they made of the
per-reading views (scheduler/sink.py, ``WrittenBatch``)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from fairway.kernel.contract import Written, WrittenBatch
from fairway.storage import device_state
from fairway.storage.rollup_writers import DeviceHour
from scheduler.metrics import LAG_BUCKETS
from scheduler.rollup_folder import RollupFolder
from scheduler.tenant_histogram import TenantHistogram
from tests.unit.test_scheduler_bundles import mongo_sink
from tests.unit.test_scheduler_settle import FakeCollection

# An hour that closed long ago (late) and open hours, spans crossing an hour's end.
NOW = datetime.now(UTC)
T0 = NOW.replace(minute=40, second=0, microsecond=0) - timedelta(hours=1)


def bodies(seed: int) -> list[bytes]:
    """Bundles of device batches (some past ten readings: "#9" sorts after "#10"), with
    tied times, streams and hours crossed, and a few readings of their own."""
    rnd = random.Random(seed)
    out = []
    for m in range(12):
        tenant = rnd.choice(["acme", "globex"])
        readings = []
        for b in range(rnd.randrange(1, 4)):
            device, stream = f"d{rnd.randrange(3)}", rnd.choice(["env", "power"])
            start = T0 + timedelta(minutes=rnd.randrange(-30, 60))
            if rnd.random() < 0.15:
                start -= timedelta(hours=30)  # a closed hour: late
            received = (start + timedelta(seconds=rnd.randrange(1, 5))).timestamp()
            for k in range(rnd.randrange(1, 14)):
                ts = start + timedelta(minutes=rnd.choice([0, 0, 1, 7]) * k)
                readings.append(
                    {
                        "device": device,
                        "stream": stream,
                        "id": f"s{seed}m{m}b{b}#{k}",
                        "ts": ts.timestamp(),
                        "received": received,
                        "values": {"t": rnd.choice([1, 2.5, -3.0]), "ok": True, "s": "x"},
                    }
                )
        readings.append(
            {
                "device": "d0",
                "stream": "env",
                "id": f"own{seed}-{m}",
                "ts": (T0 + timedelta(minutes=m)).timestamp(),
                "received": T0.timestamp(),
                "values": {"t": m},
            }
        )
        out.append(orjson.dumps({"tenant": tenant, "readings": readings}))
    return out


def views(batches: list[WrittenBatch]) -> list[Written]:
    """What the sink handed on per reading before: a view of each."""
    return [
        (
            (tenant, device, reading["id"]),
            {"stream": stream, "ts": ts, "received": received, "values": reading["values"]},
        )
        for tenant, device, stream, received, members in batches
        for _, reading, ts in members
    ]


def stored(seed: int) -> tuple[list[Written], list[WrittenBatch]]:
    sink = mongo_sink(FakeCollection())
    try:
        outcome, written, duplicates, batches = sink.store(bodies(seed), "w1")
    finally:
        sink.close()
    assert not duplicates and batches and written
    assert outcome.stored == len(written) + len(views(batches))
    return written, batches


def test_the_device_state_fold_of_batch_documents_is_the_fold_of_their_readings() -> None:
    for seed in range(10):
        written, batches = stored(seed)
        deltas = device_state.fold_written(written)
        device_state.fold_batches(batches, deltas)
        assert deltas == device_state.fold_written(written + views(batches))
        for delta in deltas.values():
            for entry in delta.latest.values():
                assert list(entry) == ["ts", "id", "values"]  # BSON compares in order


def folder(marks: list[set[DeviceHour]]) -> RollupFolder:
    made = RollupFolder(mongo_sink(FakeCollection())._state._db, start_thread=False)
    made._closed_upto = T0 - timedelta(hours=20)
    made._mark = marks.append  # type: ignore[method-assign,assignment]
    return made


def test_the_rollup_fold_of_batch_documents_is_the_fold_of_their_readings() -> None:
    for seed in range(10):
        written, batches = stored(seed)
        before_marks: list[set[DeviceHour]] = []
        before = folder(before_marks)
        before.record(written + views(batches), [])
        after_marks: list[set[DeviceHour]] = []
        after = folder(after_marks)
        after.record(written, [], batches)
        assert after._hours == before._hours and after._cells == before._cells
        assert after_marks == before_marks and any(before_marks)  # late hours marked
        # a device-hour handed over (a duplicate) takes no more folds, both ways
        key = next(iter(before._hours[max(before._hours)]))
        for made in (before, after):
            made.record([], [((*key, "x"), {"ts": max(before._hours)})])
        before.record(written + views(batches), [])
        after.record(written, [], batches)
        assert after._hours == before._hours and after._cells == before._cells
        assert after_marks == before_marks


def test_observe_counts_is_observing_each_value_count_times() -> None:
    rnd = random.Random(3)
    counted: list[tuple[str, float, int]] = [
        (rnd.choice("ab"), rnd.choice([0.001, 0.3, 7.7, 100.0]), rnd.randrange(1, 12))
        for _ in range(50)
    ]
    each, counts = (TenantHistogram("lag", "doc", LAG_BUCKETS) for _ in range(2))
    each.observe_many((t, v) for t, v, n in counted for _ in range(n))
    counts.observe_counts(counted)
    rows: Any = {t: row[:-1] for t, row in counts._rows.items()}
    assert rows == {t: row[:-1] for t, row in each._rows.items()}  # sums too, to the bit
