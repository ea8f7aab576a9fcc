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


def test_events_packed_by_the_publisher_arrive_whole_on_a_real_broker(pipeline: Pipeline) -> None:
    """The event publisher's own frames (fairway.amqp.fastpublish), not pika's: a
    burst of events over several writes, and an event over one body frame (frame_max
    less 8 bytes, under the 128 KB max_message_size services.sh gives the broker), each arrives
    with its key, body and properties."""
    from pika.adapters.select_connection import IOLoop

    from fairway.amqp.connection import Brokers
    from fairway.amqp.fastpublish import WRITE_BYTES
    from fairway.amqp.side import EventPublisher

    events = [(f"telemetry.acme.d-{i}", {"device": f"d-{i}", "n": i}) for i in range(1_500)]
    ioloop = IOLoop()
    publisher = EventPublisher(Brokers(pipeline.settings, "t-packed-events"), ioloop)
    outcome: list[tuple[int, int]] = []

    def publish_when_ready(deadline: float = time.monotonic() + 20) -> None:
        if publisher.ready:
            assert publisher.connection is not None
            body_max = publisher.connection._body_max_length  # type: ignore[attr-defined]
            big = {"device": "big", "blob": ""}
            big["blob"] = "x" * (body_max + 4 - len(orjson.dumps(big)))  # two body frames
            events.insert(700, ("telemetry.acme.big", big))
            assert sum(len(orjson.dumps(e)) for _, e in events) > 2 * WRITE_BYTES
            outcome.append(publisher.publish_all(events))
            ioloop.call_later(0.5, ioloop.stop)  # let the loop write them out
        elif time.monotonic() > deadline:
            ioloop.stop()
        else:
            ioloop.call_later(0.05, publish_when_ready)

    with listen(pipeline, "telemetry.acme.*") as fetch:
        ioloop.add_callback_threadsafe(publisher.start)
        ioloop.add_callback_threadsafe(publish_when_ready)
        ioloop.start()
        assert outcome == [(len(events), 0)]
        wait_for(lambda: len(fetch()) >= len(events), 30, f"{len(events)} events")
        got = fetch()
    publisher.close()
    ioloop.call_later(0.5, ioloop.stop)
    ioloop.start()
    ioloop.close()
    assert [(key, body) for key, _, body in got] == events  # one channel: in order
    for _, props, _ in got:
        assert props.content_type == "application/json" and props.delivery_mode == 1
