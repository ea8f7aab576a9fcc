"""Coalescing a written batch into telemetry events (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from fairway.kernel.times import iso_ms


def is_number(value: object) -> bool:
    """True for ints and floats, not booleans (a flag has no min or max)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def telemetry_key(tenant: str, device: str) -> str:
    """``telemetry.<tenant>.<device>``."""
    return f"telemetry.{tenant}.{device}"


def coalesce(bodies: Iterable[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """:func:`coalesce_readings` of single-reading tenant-queue messages (relay output)."""
    return coalesce_readings(orjson.loads(body) for body in bodies)


def coalesce_readings(readings: Iterable[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """At most one telemetry event per (tenant, device) of a written batch.

    ``readings`` are the batch's readings as decoded from its tenant-queue messages
    (:func:`fairway.kernel.contract.tenant_readings`). The event carries the latest
    reading (greatest device time; the later one in the batch on a tie), how many
    readings it stands for, and per numeric metric the min and max over all of them.
    """
    # Per (tenant, device): [latest reading, its ts, count, min, max]; the events are
    # built at the end (a list slot costs less than an event's dict key per reading).
    states: dict[tuple[str, str], list[Any]] = {}
    for msg in readings:
        key = (msg["tenant"], msg["device"])
        ts = msg["ts"]
        state = states.get(key)
        if state is None:
            low: dict[str, Any] = {}
            high: dict[str, Any] = {}
            states[key] = [msg, ts, 1, low, high]
        else:
            if ts >= state[1]:
                state[0], state[1] = msg, ts
            state[2] += 1
            low, high = state[3], state[4]
        for metric, value in msg["values"].items():
            kind = type(value)  # exact float or int first: most values, no call
            if kind is not float and kind is not int and (kind is bool or not is_number(value)):
                continue
            known = low.get(metric)  # never None once set: only numbers are kept
            if known is None or value < known:
                low[metric] = value
            known = high.get(metric)
            if known is None or value > known:
                high[metric] = value
    return [
        (
            telemetry_key(tenant, device),
            {
                "kind": "telemetry",
                "tenant": tenant,
                "device": device,
                "stream": latest["stream"],
                "values": latest["values"],
                "count": count,
                "min": low,
                "max": high,
                "ts": iso_ms(ts),
            },
        )
        for (tenant, device), (latest, ts, count, low, high) in states.items()
    ]
