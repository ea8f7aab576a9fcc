"""fairway.amqp.fastconn: the connection-callback check answers as pika's own does."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import pika.connection
import pytest
from pika import frame, spec
from pika.callback import CallbackManager
from pika.channel import Channel

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


# -- whole deliveries decoded in place ---------------------------------------------------
PROPS = spec.BasicProperties(
    content_type="application/json",
    delivery_mode=2,
    message_id="m-1",
    user_id="acme-d0001",
    headers={"x-fairway-reason": "schema", "x-n": 3, "x-nested": {"a": [1, "b"]}},
)


def marshal(*frames: Any) -> bytes:
    return b"".join(f.marshal() for f in frames)


def delivery(
    tag: int, body: bytes, props: Any = PROPS, channel: int = 1, ctag: str = "c1"
) -> bytes:
    """A delivery as the broker sends it: method, header, one body frame (none if empty)."""
    method = frame.Method(
        channel, spec.Basic.Deliver(ctag, tag, tag % 2 == 0, "telemetry", f"d{tag}.env")
    )
    header = frame.Header(channel, len(body), props)
    return marshal(method, header, *([frame.Body(channel, body)] if body else []))


def split_body(tag: int, body: bytes) -> bytes:
    """A delivery whose body spans two body frames (pika's path)."""
    half = len(body) // 2
    return marshal(
        frame.Method(1, spec.Basic.Deliver("c1", tag, False, "telemetry", "d.env")),
        frame.Header(1, len(body), spec.BasicProperties(message_id="split")),
        frame.Body(1, body[:half]),
        frame.Body(1, body[half:]),
    )


STREAM = b"".join(
    [
        delivery(1, b'{"ts": 1, "values": {"t": 1}}'),
        marshal(frame.Method(1, spec.Basic.Ack(5, True))),  # a confirm: a callback waits
        delivery(2, b""),  # an empty body: no body frame
        delivery(3, b"x" * 300, spec.BasicProperties()),  # no properties at all
        split_body(4, b"0123456789" * 10),
        marshal(frame.Heartbeat()),
        delivery(5, b"\xff\x00 not json", ctag="gone"),  # no such consumer: logged, dropped
        delivery(6, b"last"),
    ]
)


def wired(cls: type) -> tuple[Any, list[Any]]:
    """A connection of ``cls`` with channel 1 open to a consumer ``c1`` (no socket)."""
    conn = object.__new__(cls)
    conn.callbacks = CallbackManager()
    conn._frame_buffer, conn.frames_received, conn.bytes_received = b"", 0, 0
    conn._heartbeat_checker = None
    conn._body_max_length = spec.FRAME_MAX_SIZE - spec.FRAME_HEADER_SIZE - spec.FRAME_END_SIZE
    seen: list[Any] = []
    channel = pika.channel.Channel(conn, 1, None)
    channel._consumers["c1"] = lambda _ch, m, p, b: seen.append(
        (
            "deliver",
            m.consumer_tag,
            m.delivery_tag,
            m.redelivered,
            m.exchange,
            m.routing_key,
            dict(vars(p)),
            b,
        )
    )
    conn._channels = {1: channel}
    conn.callbacks.add(
        1, spec.Basic.Ack, lambda f: seen.append(("ack", f.method.delivery_tag)), one_shot=False
    )
    return conn, seen


def feed(conn: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        conn._on_data_available(chunk)


def test_whole_deliveries_reach_the_consumer_as_pikas_path_gives_them() -> None:
    fast, fast_seen = wired(SelectConnection)
    slow, slow_seen = wired(pika.SelectConnection)
    feed(fast, [STREAM])
    feed(slow, [STREAM])
    assert fast_seen == slow_seen
    assert [s[0] for s in fast_seen] == [
        "deliver",
        "ack",
        "deliver",
        "deliver",
        "deliver",
        "deliver",
    ]
    assert (
        fast_seen[0][6]["headers"] == PROPS.headers and fast_seen[0][6]["user_id"] == "acme-d0001"
    )
    assert (fast.frames_received, fast.bytes_received) == (slow.frames_received, len(STREAM))
    assert fast._frame_buffer == slow._frame_buffer == b""


def test_any_split_of_the_stream_over_reads_gives_the_same() -> None:
    slow, expected = wired(pika.SelectConnection)
    feed(slow, [STREAM])
    for cut in range(1, len(STREAM), 7):
        for size in (cut, 64):
            fast, seen = wired(SelectConnection)
            feed(
                fast, [STREAM[:cut]] + [STREAM[i : i + size] for i in range(cut, len(STREAM), size)]
            )
            assert seen == expected, (cut, size)
            assert (fast.frames_received, fast.bytes_received) == (
                slow.frames_received,
                len(STREAM),
            )
            assert fast._frame_buffer == b""


def test_a_whole_delivery_skips_pikas_frame_path() -> None:
    fast, seen = wired(SelectConnection)
    processed: list[Any] = []
    fast._process_frame = processed.append  # pika's per-frame path: only what is not a delivery
    feed(
        fast,
        [
            delivery(1, b"a")
            + delivery(2, b"b")
            + marshal(frame.Method(1, spec.Basic.Ack(5, False)))
        ],
    )
    assert [s[2] for s in seen] == [1, 2]
    assert [type(f.method) for f in processed] == [spec.Basic.Ack]


def test_a_cancelled_consumers_delivery_is_rejected_as_pika_rejects_it() -> None:
    """Handed to the consumer directly only when pika's ``_on_deliver`` would call it: a
    consumer being cancelled gets nothing, its delivery rejected, in both."""
    rejected: dict[type, list[int]] = {}
    for cls in (SelectConnection, pika.SelectConnection):
        conn, seen = wired(cls)
        channel = conn._channels[1]
        channel._set_state(channel.OPEN)
        channel._cancelled.add("c1")
        rejected[cls] = []
        channel.basic_reject = rejected[cls].append
        feed(conn, [delivery(1, b"a") + delivery(2, b"b")])
        assert seen == [], cls
    assert rejected[SelectConnection] == rejected[pika.SelectConnection] == [1, 2]


def test_a_delivery_cut_by_a_read_waits_whole_for_the_rest() -> None:
    """Cut in its method, header or body frame: kept until it is all there, then decoded
    in place (pika's path would take its frames one at a time)."""
    data = delivery(1, b"payload")
    body = data.index(b"payload")
    method_end = len(
        marshal(frame.Method(1, spec.Basic.Deliver("c1", 1, False, "telemetry", "d1.env")))
    )
    # method_end + 5: the method frame is in, the header's first 19 bytes are not.
    for cut in (3, 15, method_end + 5, body - 10, body - 5, len(data) - 3):
        fast, seen = wired(SelectConnection)
        processed: list[Any] = []
        fast._process_frame = processed.append
        feed(fast, [data[:cut]])
        assert seen == [] and fast._frame_buffer == data[:cut], cut
        feed(fast, [data[cut:]])
        assert [s[7] for s in seen] == [b"payload"] and fast._frame_buffer == b"", cut
        assert processed == [], cut


def test_a_callback_that_tears_the_connection_down_stops_the_rest() -> None:
    for cls in (SelectConnection, pika.SelectConnection):
        conn, seen = wired(cls)

        def torn(
            _ch: Any, m: Any, _p: Any, _b: bytes, conn: Any = conn, seen: list[Any] = seen
        ) -> None:
            seen.append(m.delivery_tag)
            conn._frame_buffer = b""  # what pika's _init_connection_state does

        conn._channels[1]._consumers["c1"] = torn
        feed(conn, [delivery(1, b"a") + delivery(2, b"b")])
        assert seen == [1], cls


def test_a_raising_consumer_leaves_what_follows_its_delivery_as_pika_does() -> None:
    data = delivery(1, b"a") + delivery(2, b"b") + delivery(3, b"c")
    left = []
    for cls in (SelectConnection, pika.SelectConnection):
        conn, _seen = wired(cls)

        def boom(_ch: Any, m: Any, _p: Any, _b: bytes) -> None:
            if m.delivery_tag == 2:
                raise RuntimeError("consumer bug")

        conn._channels[1]._consumers["c1"] = boom
        with pytest.raises(RuntimeError):
            feed(conn, [data])
        left.append((conn._frame_buffer, conn.bytes_received))
    assert left[0] == left[1] == (delivery(3, b"c"), len(data) - len(delivery(3, b"c")))


def test_a_bad_frame_end_is_refused_as_pika_refuses_it() -> None:
    from pika.exceptions import InvalidFrameError

    data = bytearray(delivery(1, b"abc"))
    data[-1] = 0  # the body frame's end marker
    fast, seen = wired(SelectConnection)
    with pytest.raises(InvalidFrameError):
        feed(fast, [bytes(data)])
    assert seen == []


EVERY_PROPERTY = spec.BasicProperties(
    content_type="application/json",
    content_encoding="gzip",
    headers={"x-a": 1, "x-b": "two", "x-c": [15, True], "x-d": {"e": None}},
    delivery_mode=2,
    priority=7,
    correlation_id="42",
    reply_to="amq.rabbitmq.reply-to",
    expiration="60000",
    message_id="m-\u00e9",
    timestamp=1_700_000_000,
    type="reading",
    user_id="acme-d0001",
    app_id="sim",
    cluster_id="c",
)


def not_utf8(data: bytes, text: bytes) -> bytes:
    """``data`` with ``text`` (a short string's bytes) replaced by as many invalid bytes."""
    assert data.count(text) == 1
    return data.replace(text, b"\xff" * len(text))


@pytest.mark.parametrize(
    "data",
    [
        delivery(1, b"all", EVERY_PROPERTY),
        delivery(2, b"some", spec.BasicProperties(timestamp=5, priority=0, user_id="")),
        delivery(3, b"headers only", spec.BasicProperties(headers={"k": b"v"})),
        not_utf8(delivery(4, b"bad", spec.BasicProperties(message_id="MSGID")), b"MSGID"),
        not_utf8(delivery(5, b"bad", PROPS, ctag="CTAG"), b"CTAG"),
        not_utf8(delivery(6, b"bad"), b"d6.env"),
    ],
    ids=["every property", "zero and empty", "headers", "bad property", "bad tag", "bad key"],
)
def test_methods_and_properties_decode_as_pikas_decoders_give_them(data: bytes) -> None:
    fast, fast_seen = wired(SelectConnection)
    slow, slow_seen = wired(pika.SelectConnection)
    for conn in (fast, slow):  # the consumer whose tag is not UTF-8 (kept as bytes)
        conn._channels[1]._consumers[b"\xff\xff\xff\xff"] = conn._channels[1]._consumers["c1"]
    feed(fast, [data])
    feed(slow, [data])
    assert len(fast_seen) == 1 and fast_seen == slow_seen


# The first 16 hex digits of the sha256 of pika 1.4.4's ``Channel._on_deliver`` source,
# whose behaviour for a live consumer ``fastconn._deliver_to`` repeats without calling it.
ON_DELIVER_DIGEST = "7d70f97a641d8e0d"


def test_pikas_on_deliver_is_the_one_deliver_to_repeats() -> None:
    """A pika release that changes ``_on_deliver`` (its checks or the call) fails here,
    so ``_deliver_to``'s direct call is re-read against it instead of silently
    skipping what was added."""
    source = inspect.getsource(Channel._on_deliver)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == ON_DELIVER_DIGEST, (
        "pika's Channel._on_deliver changed: check fairway.amqp.fastconn._deliver_to "
        "against it, then update ON_DELIVER_DIGEST"
    )
