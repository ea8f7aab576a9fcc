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
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, str]] = []
    for msg in readings:
        key = (msg["tenant"], msg["device"])
        values, ts = msg["values"], msg["ts"]
        event = latest.get(key)
        if event is None:
            event = latest[key] = {
                "kind": "telemetry",
                "tenant": key[0],
                "device": key[1],
                "stream": msg["stream"],
                "_ts": ts,
                "values": values,
                "count": 0,
                "min": {},
                "max": {},
            }
            order.append(key)
        elif ts >= event["_ts"]:
            event["stream"], event["_ts"], event["values"] = msg["stream"], ts, values
        event["count"] += 1
        low, high = event["min"], event["max"]
        for metric, value in values.items():
            kind = type(value)  # exact float or int first: most values, no call
            if kind is not float and kind is not int and not is_number(value):
                continue
            known = low.get(metric)  # never None once set: only numbers are kept
            if known is None or value < known:
                low[metric] = value
            known = high.get(metric)
            if known is None or value > known:
                high[metric] = value
    out = []
    for key in order:
        event = latest[key]
        ts = event.pop("_ts")
        event["ts"] = iso_ms(ts)
        out.append((telemetry_key(*key), event))
    return out
