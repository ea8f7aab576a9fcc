"""Publishes to one exchange with fixed properties, each message's frames packed at once.

pika's ``basic_publish`` builds a ``Basic.Publish``, a method, a header and a body frame
object for every message and marshals each through its generic encoders: 15-20 us a
publish, the scheduler's largest cost per write batch (one event per device of every
batch; py-spy, issue 11). Here what does not change between messages (the method's id,
ticket, exchange and flags; the encoded properties) is encoded once, and each message's
method, header and body frames are packed with ``struct``. The messages of one call go
to the connection's transport together, a write cut after the message that reaches
:data:`WRITE_BYTES` (a message's frames are never split between writes). The
bytes are pika's for the same arguments (tests/unit/test_fastpublish.py compares them,
a body over several frames included).

pika 1.4 internals relied on (besides the public ``channel_number``, ``connection`` and
``is_open``):

* ``Connection._body_max_length``: the largest body frame payload (frame_max less a
  frame's 8 bytes of head and end), as pika splits bodies;
* ``Connection._adapter_emit_data``: hands bytes to the transport, as pika's
  ``_output_marshaled_frames`` does for each frame;
* ``Connection.bytes_sent`` / ``frames_sent``: counted as pika counts them (its
  heartbeat checker reads ``bytes_sent``).

Nothing else in pika changes on a publish: its asynchronous channel keeps no state per
message (with publisher confirms the broker numbers the publishes, and acks go to the
channel's callbacks as before), a server's ``channel.flow`` is only logged, and a
blocked connection is the caller's to check (:class:`fairway.amqp.side.SideConnection`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pika import spec
from pika.channel import Channel

# Writes are cut at about this size so that a burst of many messages is never one large
# buffer in the transport's queue (a partial send of it would copy the rest each time).
WRITE_BYTES = 64 * 1024
_FRAME_HEAD = struct.Struct(">BHL")  # frame type, channel, payload size
_HEADER_HEAD = struct.Struct(">BHLHHQ")  # frame head, then class id, weight, body size
_END = bytes((spec.FRAME_END,))
_BITS_END = b"\x00" + _END  # mandatory and immediate off, then the method frame's end
_SHORT_MAX = 255  # AMQP short strings (the routing key): at most 255 octets


class FixedPublish:
    """The frames of ``basic.publish`` to ``exchange`` with ``properties`` (mandatory
    and immediate off), packed for any routing key and body."""

    def __init__(self, exchange: str, properties: spec.BasicProperties) -> None:
        name = exchange.encode()
        if len(name) > _SHORT_MAX:
            raise ValueError(f"exchange name over {_SHORT_MAX} bytes: {exchange!r}")
        # class and method id, ticket (0), the exchange as a short string
        self._method = struct.pack(">IHB", spec.Basic.Publish.INDEX, 0, len(name)) + name
        self._properties = b"".join(properties.encode())
        self._header_size = 12 + len(self._properties)  # class id, weight, body size: 12

    def write(self, channel: Channel, messages: Iterable[tuple[str, bytes]]) -> tuple[int, int]:
        """Write each ``(routing key, body)`` on the open ``channel``; return (written,
        refused): a routing key over 255 bytes is refused (pika would raise)."""
        connection = channel.connection
        number = channel.channel_number
        body_max = connection._body_max_length
        pieces: list[bytes] = []
        size = frames = written = refused = 0
        for routing_key, body in messages:
            key = routing_key.encode()
            if len(key) > _SHORT_MAX:
                refused += 1
                continue
            size += self._pack(pieces, number, key, body, body_max)
            frames += 2 + (len(body) + body_max - 1) // body_max
            written += 1
            if size >= WRITE_BYTES:
                _emit(connection, pieces, frames)
                pieces, size, frames = [], 0, 0
        if pieces:
            _emit(connection, pieces, frames)
        return written, refused

    def _pack(
        self, pieces: list[bytes], number: int, key: bytes, body: bytes, body_max: int
    ) -> int:
        """Append one message's frames (method, header, bodies of at most ``body_max``
        bytes) to ``pieces``; return their size."""
        method = self._method
        length = len(body)
        pieces += (
            _FRAME_HEAD.pack(spec.FRAME_METHOD, number, len(method) + len(key) + 2),
            method,
            bytes((len(key),)),
            key,
            _BITS_END,
            _HEADER_HEAD.pack(
                spec.FRAME_HEADER, number, self._header_size, spec.BasicProperties.INDEX, 0, length
            ),
            self._properties,
            _END,
        )
        size = len(method) + len(key) + 10 + self._header_size + 8
        if length <= body_max:
            if length:
                pieces += (_FRAME_HEAD.pack(spec.FRAME_BODY, number, length), body, _END)
                size += length + 8
            return size
        for start in range(0, length, body_max):
            part = body[start : start + body_max]
            pieces += (_FRAME_HEAD.pack(spec.FRAME_BODY, number, len(part)), part, _END)
            size += len(part) + 8
        return size


def _emit(connection: object, pieces: list[bytes], frames: int) -> None:
    """Hand ``pieces`` to the transport as one write, counted as pika counts frames."""
    data = b"".join(pieces)
    connection.bytes_sent += len(data)  # type: ignore[attr-defined]
    connection.frames_sent += frames  # type: ignore[attr-defined]
    connection._adapter_emit_data(data)  # type: ignore[attr-defined]
