"""The scheduler publishes coalesced telemetry events after a batch is durable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

from fairway.kernel import topology
from tests.harness import Pipeline, reading, wait_for


@contextmanager
def listen(pipeline: Pipeline, key: str) -> Iterator[Any]:
    """An exclusive queue bound to ``events`` with ``key``; yields a fetch function."""
    with pipeline.channel() as channel:
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, topology.EVENTS, key)
        got: list[tuple[str, Any, dict]] = []

        def fetch() -> list[tuple[str, Any, dict]]:
            while True:
                method, props, raw = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return got
                got.append((method.routing_key, props, orjson.loads(raw)))

        yield fetch


def test_published_readings_become_coalesced_telemetry_events(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.device("acme", "dev-2")
    pipeline.start("relay")
    pipeline.start("scheduler")
    now = round(time.time(), 3)
    temps = [21.0, 35.5, -4.0, 22.25]
    messages = [
        ("dev-1.env", reading(now - 10 + i, temp=t, door_open=i % 2 == 0), {"message_id": f"a{i}"})
        for i, t in enumerate(temps)
    ]
    messages.append(("dev-2.power", reading(now, watts=7), {"message_id": "b0"}))
    with listen(pipeline, "telemetry.#") as fetch:
        pipeline.publish(messages)
        pipeline.wait_stored(5)

        def counted() -> int:
            return sum(body["count"] for _, _, body in fetch())

        wait_for(lambda: counted() >= 5, 30, "events covering 5 readings")
        time.sleep(0.5)  # room for a wrong extra event to show up
        assert counted() == 5
        events = fetch()
    by_device: dict[str, list[dict]] = {}
    for key, props, body in events:
        assert props.content_type == "application/json"
        assert props.delivery_mode in (None, 1)  # transient
        assert key == f"telemetry.acme.{body['device']}"
        by_device.setdefault(body["device"], []).append(body)
    # At most one event per device per batch, so never more events than readings.
    assert 1 <= len(by_device["dev-1"]) <= 4
    last = by_device["dev-1"][-1]
    assert last["kind"] == "telemetry" and last["tenant"] == "acme" and last["stream"] == "env"
    assert last["values"] == {"temp": 22.25, "door_open": False}
    assert last["ts"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(now - 7)))
    assert min(e["min"]["temp"] for e in by_device["dev-1"]) == -4.0
    assert max(e["max"]["temp"] for e in by_device["dev-1"]) == 35.5
    assert "door_open" not in last["min"]
    (power,) = by_device["dev-2"]
    assert power["values"] == {"watts": 7} and power["count"] == 1
    assert power["min"] == power["max"] == {"watts": 7}
    published = pipeline.metric("scheduler", "fairway_scheduler_events_total")
    assert published == len(events)


@pytest.mark.settings(events_enabled=False)
def test_no_events_when_disabled(pipeline: Pipeline) -> None:
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.start("relay")
    pipeline.start("scheduler")
    with listen(pipeline, "#") as fetch:
        pipeline.publish([("dev-1.env", reading(), {"message_id": "x"})])
        pipeline.wait_stored(1)
        time.sleep(1)  # an event would follow the ack within milliseconds
        assert fetch() == []
    assert pipeline.metric("scheduler", "fairway_scheduler_events_total") == 0
