"""One write batch's events published: pika's ``basic_publish`` against
:mod:`fairway.amqp.fastpublish`, CPU per event.

No broker: an open pika channel on a ``fastconn`` connection whose transport is pika's
plaintext transport (its writes joined, :mod:`fairway.amqp.joined_writes`) on a socket
that takes every ``send``. Each round publishes ``--devices`` coalesced telemetry events
(the scheduler's per-batch events: one per device) and then lets the transport send
them, as the I/O loop would; ``orjson.dumps`` of each event is in both arms. The two
arms alternate round by round in one process; CPU is ``time.process_time``.

Target: the packed path costs less CPU per event than pika's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
from pika import spec
from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport
from pika.callback import CallbackManager
from pika.channel import Channel

from fairway.amqp import side
from fairway.amqp.fastconn import SelectConnection
from fairway.amqp.joined_writes import join_writes
from fairway.domain.coalesce import coalesce_readings
from fairway.kernel import topology

NAME = "event_publish"
FRAME_MAX = 131_072


class _Socket:
    """Takes every ``send`` whole."""

    def send(self, data: bytes) -> int:
        return len(data)

    def fileno(self) -> int:
        return 99


class _Poller:
    """The transport's writer watch: the round runs it once, as the loop's turn would."""

    def __init__(self) -> None:
        self.writer: Any = None

    def set_reader(self, _fd: int, _on_readable: Any) -> None:
        pass

    def set_writer(self, _fd: int, on_writable: Any) -> None:
        self.writer = on_writable

    def remove_writer(self, _fd: int) -> bool:
        self.writer = None
        return True


def _channel() -> tuple[Channel, _Poller]:
    """An open channel whose connection writes to a real (joined) plaintext transport."""
    poller = _Poller()
    transport = _AsyncPlaintextTransport(_Socket(), None, poller)  # type: ignore[arg-type]
    join_writes(transport)
    conn: Any = object.__new__(SelectConnection)
    conn.callbacks = CallbackManager()
    conn._body_max_length = FRAME_MAX - spec.FRAME_HEADER_SIZE - spec.FRAME_END_SIZE
    conn.bytes_sent = conn.frames_sent = 0
    conn._transport = transport
    channel = Channel(conn, 1, None)
    channel._state = Channel.OPEN
    return channel, poller


def _events(devices: int) -> list[tuple[str, dict[str, Any]]]:
    """One coalesced event per device, from three readings each (the scheduler's shape)."""
    readings = [
        {
            "tenant": "tenant-07",
            "device": f"dev-{d:05d}",
            "stream": "env",
            "ts": 1_765_000_000.0 + r,
            "values": {"temp": 20.0 + r + d % 7, "hum": 40 + r, "ok": True},
        }
        for d in range(devices)
        for r in range(3)
    ]
    return coalesce_readings(readings)


def _pika_arm(channel: Channel) -> Callable[[list[tuple[str, dict[str, Any]]]], None]:
    def publish_all(events: list[tuple[str, dict[str, Any]]]) -> None:
        for key, event in events:  # main's EventPublisher.publish, per event
            channel.basic_publish(topology.EVENTS, key, orjson.dumps(event), side.EVENT_PROPERTIES)

    return publish_all


def _packed_arm(channel: Channel) -> Callable[[list[tuple[str, dict[str, Any]]]], None]:
    publisher = side.EventPublisher.__new__(side.EventPublisher)  # no I/O loop
    publisher.channel, publisher.blocked = channel, False

    def publish_all(events: list[tuple[str, dict[str, Any]]]) -> None:
        assert publisher.publish_all(events) == (len(events), 0)

    return publish_all


def measure(devices: int, rounds: int, batches: int) -> dict[str, Any]:
    """Alternate the arms ``rounds`` times, ``batches`` batches each; us per event."""
    arms = {}
    for name, make in (("pika", _pika_arm), ("packed", _packed_arm)):
        channel, poller = _channel()
        arms[name] = (make(channel), poller, channel)
    per_event: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, (publish_all, poller, _) in arms.items():
            batch_events = [_events(devices) for _ in range(batches)]  # fresh, outside timing
            start = time.process_time()
            for events in batch_events:
                publish_all(events)
                poller.writer()  # the loop's turn: the joined send
            spent = time.process_time() - start
            per_event[name].append(round(spent / (devices * batches) * 1e6, 2))
    wire = {name: channel.connection.bytes_sent for name, (_, _, channel) in arms.items()}
    median = {name: sorted(v)[len(v) // 2] for name, v in per_event.items()}
    return {
        "benchmark": NAME,
        "devices_per_batch": devices,
        "batches_per_round": batches,
        "us_per_event": per_event,
        "median_us_per_event": median,
        "bytes_sent": wire,
        "targets": {
            "packed_cheaper_than_pika": median["packed"] < median["pika"],
            "same_bytes_sent": wire["pika"] == wire["packed"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50, help="events per batch")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batches", type=int, default=200, help="batches per round and arm")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.devices, args.rounds, args.batches), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
