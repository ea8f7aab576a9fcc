"""fairway.amqp.fastpublish: the bytes on the wire are pika's own ``basic_publish``'s."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pika import exceptions, spec
from pika.callback import CallbackManager
from pika.channel import Channel

from fairway.amqp import side
from fairway.amqp.connection import Brokers
from fairway.amqp.fastconn import SelectConnection
from fairway.amqp.fastpublish import WRITE_BYTES, FixedPublish
from fairway.kernel import topology
from fairway.kernel.settings import Settings

FRAME_MAX = 131_072  # RabbitMQ's default, as negotiated
PROPS = side.EVENT_PROPERTIES


def open_channel(number: int = 1, frame_max: int = FRAME_MAX) -> Any:
    """An open pika channel on a connection without a socket: what the connection would
    hand its transport is kept in ``connection.emitted``, one entry per write."""
    conn: Any = object.__new__(SelectConnection)
    conn.callbacks = CallbackManager()
    conn._body_max_length = frame_max - spec.FRAME_HEADER_SIZE - spec.FRAME_END_SIZE
    conn.bytes_sent = conn.frames_sent = 0
    conn.emitted = []
    conn._adapter_emit_data = conn.emitted.append
    channel = Channel(conn, number, None)
    channel._state = Channel.OPEN
    return channel


def pikas(
    messages: list[tuple[str, bytes]],
    number: int = 1,
    frame_max: int = FRAME_MAX,
    exchange: str = topology.EVENTS,
    properties: spec.BasicProperties = PROPS,
) -> tuple[bytes, int, int]:
    """The bytes, frame count and byte count of pika's ``basic_publish`` of each."""
    channel = open_channel(number, frame_max)
    for key, body in messages:
        channel.basic_publish(exchange, key, body, properties)
    conn = channel.connection
    return b"".join(conn.emitted), conn.frames_sent, conn.bytes_sent


def ours(
    messages: list[tuple[str, bytes]],
    number: int = 1,
    frame_max: int = FRAME_MAX,
    exchange: str = topology.EVENTS,
    properties: spec.BasicProperties = PROPS,
) -> tuple[bytes, int, int]:
    channel = open_channel(number, frame_max)
    written, refused = FixedPublish(exchange, properties).write(channel, messages)
    assert (written, refused) == (len(messages), 0)
    conn = channel.connection
    return b"".join(conn.emitted), conn.frames_sent, conn.bytes_sent


EVENT = orjson.dumps({"device": "d-1", "ts": "2026-12-06T23:00:00Z", "values": {"t": 21.5}})


@pytest.mark.parametrize(
    "body",
    [EVENT, b"", b"x", b"y" * (FRAME_MAX - 8), b"z" * (FRAME_MAX - 7), bytes(range(256)) * 1200],
    ids=["event", "empty", "one-byte", "body-max", "body-max+1", "307200-bytes"],
)
def test_one_publish_is_pikas_bytes(body: bytes) -> None:
    message = [("telemetry.acme.d-1", body)]
    assert ours(message) == pikas(message)


def test_a_body_over_frame_max_is_cut_as_pika_cuts_it() -> None:
    body = bytes(range(251)) * 70  # 17,570 bytes: five body frames at a 4,096 frame_max
    message = [("telemetry.t.d", body)]
    wire, frames, _ = ours(message, frame_max=4096)
    assert (wire, frames) == pikas(message, frame_max=4096)[:2]
    assert frames == 2 + 5


@pytest.mark.parametrize("number", [1, 255, 256, 2047])
def test_any_channel_number(number: int) -> None:
    message = [("telemetry.t.d", EVENT)]
    assert ours(message, number=number) == pikas(message, number=number)


def test_other_exchanges_keys_and_properties() -> None:
    """Nothing in the packing is particular to the event exchange or its properties."""
    properties = spec.BasicProperties(
        content_type="text/plain",
        headers={"x-a": 1, "x-b": "two"},
        delivery_mode=2,
        priority=3,
        message_id="m-1",
        timestamp=1_700_000_000,
        app_id="fairway",
    )
    messages = [("é.ünïcode.kéy", EVENT), ("", b""), ("k" * 255, EVENT)]
    for exchange in ("", "telemetry", "x" * 255):
        assert ours(messages, 7, 4096, exchange, properties) == pikas(
            messages, 7, 4096, exchange, properties
        )


def test_many_messages_are_pikas_bytes_in_order_in_bounded_writes() -> None:
    messages = [(f"telemetry.t{i % 7}.d-{i}", EVENT + bytes(i % 300)) for i in range(2_000)]
    wire, frames, sent = ours(messages)
    assert (wire, frames, sent) == pikas(messages)
    channel = open_channel()
    FixedPublish(topology.EVENTS, PROPS).write(channel, messages)
    writes = channel.connection.emitted
    assert len(writes) > 1 and b"".join(writes) == wire
    assert max(map(len, writes)) < WRITE_BYTES + 1_000  # cut after the message passing it
    assert all(len(w) >= WRITE_BYTES for w in writes[:-1])


def test_a_routing_key_amqp_cannot_carry_is_refused_and_the_rest_written() -> None:
    too_long = "k" * 256
    with pytest.raises(exceptions.ShortStringTooLong):
        open_channel().basic_publish(topology.EVENTS, too_long, EVENT, PROPS)
    channel = open_channel()
    written = FixedPublish(topology.EVENTS, PROPS).write(
        channel, [("a", EVENT), (too_long, EVENT), ("é" * 128, EVENT), ("b", EVENT)]
    )
    assert written == (2, 2)  # 128 x "é" is 256 bytes
    assert b"".join(channel.connection.emitted) == pikas([("a", EVENT), ("b", EVENT)])[0]


def test_an_exchange_name_amqp_cannot_carry_is_refused_at_once() -> None:
    with pytest.raises(ValueError):
        FixedPublish("x" * 256, PROPS)


def publisher(channel: Any) -> side.EventPublisher:
    made = side.EventPublisher.__new__(side.EventPublisher)  # no I/O loop: only publishing
    made.brokers = Brokers(Settings(), "t-events")
    made.channel, made.blocked = channel, False
    return made


def test_the_event_publisher_writes_pikas_bytes_in_one_write() -> None:
    events = [(f"telemetry.acme.d-{i}", {"device": f"d-{i}", "v": i}) for i in range(50)]
    channel = open_channel()
    assert publisher(channel).publish_all(events) == (50, 0)
    assert len(channel.connection.emitted) == 1
    expected = pikas([(key, orjson.dumps(event)) for key, event in events])
    assert channel.connection.emitted[0] == expected[0]
    assert publisher(channel).publish("telemetry.acme.d-0", events[0][1]) is True


def test_the_event_publisher_drops_and_counts_while_down_closed_or_blocked() -> None:
    events = [("telemetry.acme.d-1", {"v": 1}), ("telemetry.acme.d-2", {"v": 2})]
    assert publisher(None).publish_all(iter(events)) == (0, 2)
    closed = open_channel()
    closed._state = Channel.CLOSED
    assert publisher(closed).publish_all(events) == (0, 2)
    assert publisher(closed).publish(*events[0]) is False
    blocked = publisher(open_channel())
    blocked.blocked = True
    assert blocked.publish_all(events) == (0, 2)
    assert blocked.channel.connection.emitted == []
    assert closed.connection.emitted == []


def test_the_event_publisher_drops_while_its_socket_holds_a_megabyte_unsent() -> None:
    events = [("telemetry.acme.d-1", {"v": 1}), ("telemetry.acme.d-2", {"v": 2})]
    channel = open_channel()
    unsent = [side.MAX_BUFFERED_BYTES]
    channel.connection._transport = SimpleNamespace(get_write_buffer_size=lambda: unsent[0])
    assert publisher(channel).publish_all(events) == (0, 2)
    assert channel.connection.emitted == []
    unsent[0] = side.MAX_BUFFERED_BYTES - 1
    assert publisher(channel).publish_all(events) == (2, 0)
