"""Coalescing a written batch into at most one telemetry event per device."""

from __future__ import annotations

import random

import orjson

from fairway.domain.coalesce import coalesce, coalesce_readings
from fairway.kernel.times import iso_ms


def body(tenant: str, device: str, ts: float, stream: str = "env", **values: object) -> bytes:
    return orjson.dumps(
        {
            "tenant": tenant,
            "device": device,
            "stream": stream,
            "id": f"m{ts}",
            "ts": ts,
            "received": ts + 0.5,
            "values": values,
        }
    )


def test_one_event_per_device_with_latest_values_and_min_max() -> None:
    batch = [
        body("acme", "d1", 100.0, temp=20.0, ok=True),
        body("acme", "d2", 100.0, temp=5.0),
        body("acme", "d1", 102.0, stream="power", temp=25.0, ok=False, state="hot"),
        body("acme", "d1", 101.0, temp=-3.5, amps=2),
    ]
    events = dict(coalesce(batch))
    assert list(events) == ["telemetry.acme.d1", "telemetry.acme.d2"]
    assert events["telemetry.acme.d1"] == {
        "kind": "telemetry",
        "tenant": "acme",
        "device": "d1",
        "stream": "power",
        "ts": iso_ms(102.0),
        "values": {"temp": 25.0, "ok": False, "state": "hot"},
        "count": 3,
        # Booleans and strings have no min or max; metrics absent from the latest
        # reading still report theirs.
        "min": {"temp": -3.5, "amps": 2},
        "max": {"temp": 25.0, "amps": 2},
    }
    # The key order is on the wire (orjson keeps it): as the events were always built.
    assert list(events["telemetry.acme.d1"]) == [
        "kind",
        "tenant",
        "device",
        "stream",
        "values",
        "count",
        "min",
        "max",
        "ts",
    ]
    assert events["telemetry.acme.d2"]["count"] == 1
    assert events["telemetry.acme.d2"]["min"] == {"temp": 5.0}


def test_tenants_with_the_same_device_id_are_kept_apart_and_ties_take_the_later() -> None:
    batch = [
        body("a", "d", 10.0, v=1),
        body("b", "d", 10.0, v=2),
        body("a", "d", 10.0, v=3),
    ]
    events = dict(coalesce(batch))
    assert events["telemetry.a.d"]["values"] == {"v": 3}
    assert events["telemetry.a.d"]["count"] == 2
    assert events["telemetry.b.d"]["values"] == {"v": 2}
    assert events["telemetry.a.d"]["ts"] == "1970-01-01T00:00:10.000+00:00"


def test_random_batches_match_a_brute_force_summary() -> None:
    rng = random.Random(7)
    for _ in range(200):
        readings = [
            (
                rng.choice("ab"),
                rng.choice(["d1", "d2", "d3"]),
                float(rng.randint(0, 20)),
                {"x": rng.uniform(-10, 10)} if rng.random() < 0.8 else {"flag": True},
            )
            for _ in range(rng.randint(1, 40))
        ]
        events = dict(coalesce([body(t, d, ts, **v) for t, d, ts, v in readings]))
        keys = {(t, d) for t, d, _, _ in readings}
        assert set(events) == {f"telemetry.{t}.{d}" for t, d in keys}
        for t, d in keys:
            mine = [(ts, i, v) for i, (tt, dd, ts, v) in enumerate(readings) if (tt, dd) == (t, d)]
            event = events[f"telemetry.{t}.{d}"]
            assert event["count"] == len(mine)
            assert event["values"] == max(mine, key=lambda r: (r[0], r[1]))[2]
            xs = [v["x"] for _, _, v in mine if "x" in v]
            assert event["min"] == ({"x": min(xs)} if xs else {})
            assert event["max"] == ({"x": max(xs)} if xs else {})


def test_numbers_of_every_kind_count_and_flags_do_not() -> None:
    """The exact-type fast path gives what is_number gives: int subclasses other than
    bool are numbers, booleans and strings are not."""

    class Count(int):
        pass

    events = dict(
        coalesce_readings(
            [
                {
                    "tenant": "a",
                    "device": "d",
                    "stream": "s",
                    "ts": 1.0,
                    "values": {"n": Count(5), "f": True, "s": "x", "x": 2},
                },
                {
                    "tenant": "a",
                    "device": "d",
                    "stream": "s",
                    "ts": 2.0,
                    "values": {"n": 3, "f": False, "x": 2.5},
                },
            ]
        )
    )
    event = events["telemetry.a.d"]
    assert event["min"] == {"n": 3, "x": 2}
    assert event["max"] == {"n": 5, "x": 2.5}
    assert type(event["max"]["n"]) is Count
