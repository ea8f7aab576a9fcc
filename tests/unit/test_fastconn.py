"""fairway.amqp.fastconn: the connection-callback check answers as pika's own does."""

from __future__ import annotations

import random
from typing import Any

import pika.channel
import pika.connection
import pika.exceptions
import pytest
from pika import frame, spec
from pika.callback import CallbackManager

from fairway.amqp.fastconn import SelectConnection


def connection() -> Any:
    conn = object.__new__(SelectConnection)  # no socket: only the callback table is used
    conn.callbacks = CallbackManager()
    return conn


FRAMES = [
    frame.Method(1, spec.Basic.Deliver("ctag", 7, False, "telemetry", "d.env")),
    frame.Method(1, spec.Basic.Ack(3, True)),
    frame.Method(2, spec.Basic.Ack(3, False)),
    frame.Method(1, spec.Channel.CloseOk()),
    frame.Method(1, spec.Basic.ConsumeOk("ctag")),
    frame.Method(0, spec.Connection.CloseOk()),
    frame.Header(1, 10, spec.BasicProperties()),
    frame.Body(1, b"0123456789"),
    frame.Heartbeat(),
]


def test_without_callbacks_no_frame_is_taken() -> None:
    conn = connection()
    for value in FRAMES:
        assert conn._process_callbacks(value) is False
        assert pika.connection.Connection._process_callbacks(conn, value) is False


def test_a_frame_with_a_waiting_callback_runs_it_as_pika_does() -> None:
    fast, slow = connection(), connection()
    seen: dict[str, list[Any]] = {"fast": [], "slow": []}
    for conn, name in ((fast, "fast"), (slow, "slow")):
        conn.callbacks.add(1, spec.Channel.CloseOk, lambda f, n=name: seen[n].append(f))
        conn.callbacks.add(1, spec.Basic.Ack, lambda f, n=name: seen[n].append(f), one_shot=False)
        conn.callbacks.add(2, spec.Basic.Ack, lambda f: None)  # one-shot
    fast_taken = [fast._process_callbacks(f) for f in FRAMES]
    slow_taken = [bool(pika.connection.Connection._process_callbacks(slow, f)) for f in FRAMES]
    assert fast_taken == slow_taken == [False, True, True, True, False, False, False, False, False]
    assert seen["fast"] == seen["slow"] == [FRAMES[1], FRAMES[3]]
    assert fast._process_callbacks(FRAMES[2]) is False  # channel 2's one-shot ran: none left
    # The one-shot Channel.CloseOk callback is gone afterwards, in both.
    assert fast._process_callbacks(FRAMES[3]) is False
    assert bool(pika.connection.Connection._process_callbacks(slow, FRAMES[3])) is False


# -- whole deliveries handed to their channel (the receive path) ------------------------
def receiving(cls: type) -> Any:
    """A connection of ``cls`` with two channels (no socket: only frames go in), and the
    deliveries its consumers see."""
    conn = object.__new__(cls)
    conn.callbacks = CallbackManager()
    conn._frame_buffer = b""
    conn._heartbeat_checker = None
    conn.frames_received = conn.bytes_received = 0
    conn.seen = []
    conn._channels = {}
    for number in (1, 2):
        ch = object.__new__(pika.channel.Channel)
        ch.channel_number = number
        ch._content_assembler = pika.channel.ContentFrameAssembler()
        ch._cancelled = set()
        ch._consumers_with_noack = set()
        ch._consumers = {
            f"ctag{number}": lambda c, m, p, b: conn.seen.append(
                (c.channel_number, vars(m), vars(p), b)
            )
        }
        conn._channels[number] = ch
    # A confirm-style callback on channel 2: its basic.ack frames are taken there.
    conn.callbacks.add(
        2,
        spec.Basic.Ack,
        lambda f: conn.seen.append(("ack", f.method.delivery_tag)),
        one_shot=False,
    )
    return conn


def delivery(number: int, tag: int, body: bytes, pieces: int = 1) -> bytes:
    """A basic.deliver's frames on the wire (the body in ``pieces`` body frames): property
    bytes repeated (seven kinds) and new every time (a message id), a routing key that
    is not UTF-8 now and then."""
    props = spec.BasicProperties(
        headers={"x-fairway-readings": tag % 7 + 1, "nested": {"a": [1, "b"]}},
        delivery_mode=2,
        content_type="application/json",
        message_id=f"m{tag}" if tag % 5 != 1 else None,
    )
    key = b"d.\xff" if tag % 17 == 0 else "t1.d\u00e9"
    method = spec.Basic.Deliver(f"ctag{number}", tag, tag % 3 == 0, "tenants", key)
    out = frame.Method(number, method).marshal() + frame.Header(number, len(body), props).marshal()
    cut = -(-len(body) // pieces) if body else 1
    for i in range(0, len(body), cut):
        out += frame.Body(number, body[i : i + cut]).marshal()
    return out


def stream() -> bytes:
    """Deliveries on two channels, an empty body, a body in three frames, heartbeats and
    confirms between them."""
    parts = []
    for tag in range(1, 400):
        number = 1 + tag % 2
        body = b"" if tag % 11 == 0 else bytes(range(tag % 50)) * (tag % 4 + 1)
        parts.append(delivery(number, tag, body, pieces=3 if tag % 13 == 0 else 1))
        if tag % 9 == 0:
            parts.append(frame.Heartbeat().marshal())
        if tag % 10 == 0:
            parts.append(frame.Method(2, spec.Basic.Ack(tag, False)).marshal())
    return b"".join(parts)


def test_deliveries_reach_consumers_as_pika_delivers_them_whatever_the_reads() -> None:
    data = stream()
    rng = random.Random(11)
    for cuts in ([len(data)], [1] * 64 + [len(data)], [rng.randint(1, 300) for _ in range(400)]):
        fast, slow = receiving(SelectConnection), receiving(pika.SelectConnection)
        offset = 0
        for n in [*cuts, len(data)]:
            chunk, offset = data[offset : offset + n], offset + n
            if chunk:
                fast._on_data_available(chunk)
                pika.connection.Connection._on_data_available(slow, chunk)
        assert fast.seen == slow.seen
        assert len([s for s in fast.seen if s[0] != "ack"]) == 399
        assert (fast.frames_received, fast.bytes_received) == (
            slow.frames_received,
            slow.bytes_received,
        )
        assert fast._frame_buffer == slow._frame_buffer == b""


def test_a_whole_delivery_skips_pikas_frame_by_frame_path() -> None:
    conn = receiving(SelectConnection)
    calls = []
    conn._process_frame = lambda f: calls.append(f)  # pika's path, counted
    conn._on_data_available(delivery(1, 5, b"{}") + delivery(2, 6, b""))
    assert [s[1]["delivery_tag"] for s in conn.seen] == [
        5
    ]  # the empty body went pika's way (not run here)
    assert [type(f).__name__ for f in calls] == ["Method", "Header"]


def test_a_closed_connection_stops_the_buffer_being_read() -> None:
    conn = receiving(SelectConnection)
    ch = conn._channels[1]

    def close(c: Any, m: Any, p: Any, b: bytes) -> None:
        conn.seen.append(m.delivery_tag)
        conn._frame_buffer = b""  # what pika's _init_connection_state does

    ch._consumers["ctag1"] = close
    conn._on_data_available(delivery(1, 1, b"a") + delivery(1, 3, b"b"))
    assert conn.seen == [1] and conn._frame_buffer == b""


def test_a_bad_frame_end_is_refused_as_pika_refuses_it() -> None:
    data = bytearray(delivery(1, 1, b"abc"))
    data[-1] = 0
    with pytest.raises(pika.exceptions.InvalidFrameError):
        receiving(SelectConnection)._on_data_available(bytes(data))


def test_each_delivery_gets_its_own_properties() -> None:
    got = []
    conn = receiving(SelectConnection)
    conn._channels[1]._consumers["ctag1"] = lambda c, m, p, b: got.append(p)
    conn._on_data_available(delivery(1, 1, b"a") + delivery(1, 36, b"b"))  # same properties
    first, second = got
    assert first is not second and first.headers is not second.headers
    first.headers["x-fairway-readings"] = 99
    assert second.headers["x-fairway-readings"] == 2
