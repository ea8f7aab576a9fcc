"""fairway.amqp.fastconn: the connection-callback check answers as pika's own does."""

from __future__ import annotations

from typing import Any

import pika.connection
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
