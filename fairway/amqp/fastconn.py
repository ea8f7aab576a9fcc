"""pika's ``SelectConnection`` less two per-frame costs on the relay's hot path.

* *The connection-callback check.* For every method frame it receives (each
  ``basic.deliver``, each ``basic.ack`` confirm) pika asks its ``CallbackManager``
  whether a connection-level callback waits for it. The check sanitises the channel
  number and the method through ``name_or_value``, which raises and catches a
  ``TypeError`` for each: ~10 % of the relay's CPU in a drain (py-spy, issue 11). Here
  the same question is answered from the callback table directly, and only a frame with
  a callback waiting goes the original way, so what runs is unchanged.
* *A delivery's three frames.* pika decodes each frame into an object, trims its
  receive buffer by copying the rest of it (per frame), and passes each frame through
  the connection, the channel and its content assembler before the consumer is called:
  about half of a relay's CPU per single-reading message (py-spy, issue 11). Here a
  ``basic.deliver`` whose header and single body frame are all in the buffer is decoded
  in place (its method and properties as pika's decoders give them, in one function
  each) and handed to its consumer as the channel's ``_on_deliver`` would (without the
  frame objects it takes); one that a read cut short stays in the buffer until the rest
  arrives (a bundle is often larger than one read). Every other frame (a body over
  several frames, confirms, heartbeats, replies) goes pika's way, one frame at a time.
  The buffer is trimmed once per read.

Writes are pika's, sent joined (:mod:`fairway.amqp.joined_writes`).
"""

from __future__ import annotations

import struct
from typing import Any

import pika
from pika import data, frame, spec

from fairway.amqp.joined_writes import join_writes

_FRAME_HEAD = struct.Struct(">BHL")  # frame type, channel, payload size
_METHOD_HEAD = struct.Struct(">BHLI")  # a method frame's head, then its class and method id
_HEADER_HEAD = struct.Struct(">BHLHHQ")  # a header frame's head, then class id, weight, body size
_TAG_BITS = struct.Struct(">QB")  # a delivery's tag and its bit flags (redelivered)
_FLAGS = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_SHORT, _OCTET, _STAMP, _TABLE = "short", "octet", "stamp", "table"
_P = spec.BasicProperties
# BasicProperties' fields in wire order (pika's decoder): presence flag, attribute, type.
_PROPERTY_FIELDS = (
    (_P.FLAG_CONTENT_TYPE, "content_type", _SHORT),
    (_P.FLAG_CONTENT_ENCODING, "content_encoding", _SHORT),
    (_P.FLAG_HEADERS, "headers", _TABLE),
    (_P.FLAG_DELIVERY_MODE, "delivery_mode", _OCTET),
    (_P.FLAG_PRIORITY, "priority", _OCTET),
    (_P.FLAG_CORRELATION_ID, "correlation_id", _SHORT),
    (_P.FLAG_REPLY_TO, "reply_to", _SHORT),
    (_P.FLAG_EXPIRATION, "expiration", _SHORT),
    (_P.FLAG_MESSAGE_ID, "message_id", _SHORT),
    (_P.FLAG_TIMESTAMP, "timestamp", _STAMP),
    (_P.FLAG_TYPE, "type", _SHORT),
    (_P.FLAG_USER_ID, "user_id", _SHORT),
    (_P.FLAG_APP_ID, "app_id", _SHORT),
    (_P.FLAG_CLUSTER_ID, "cluster_id", _SHORT),
)
# Flag word -> the fields present (at most 2**15 words: the last bit says "another word").
_LAYOUTS: dict[int, tuple[tuple[str, str], ...]] = {}
_HEAD, _END = spec.FRAME_HEADER_SIZE, spec.FRAME_END_SIZE  # 7 and 1 bytes
_FRAME_END = spec.FRAME_END  # 0xCE
_FRAME_METHOD, _FRAME_HEADER, _FRAME_BODY = spec.FRAME_METHOD, spec.FRAME_HEADER, spec.FRAME_BODY
_DELIVER, _DELIVER_NAME = spec.Basic.Deliver.INDEX, spec.Basic.Deliver.NAME
_BASIC = spec.BasicProperties.INDEX
_PARTIAL = object()  # a delivery whose frames are not all received yet


class SelectConnection(pika.SelectConnection):
    """``pika.SelectConnection`` with a cheap "no callback waits for this frame" path and
    whole deliveries decoded in place."""

    def _proto_connection_made(self, transport: Any) -> None:
        join_writes(transport)
        super()._proto_connection_made(transport)

    def _process_callbacks(self, frame_value: Any) -> bool:
        if type(frame_value) is frame.Method and not self._callback_waits(
            frame_value.channel_number, frame_value.method.NAME
        ):
            return False
        return super()._process_callbacks(frame_value)

    def _callback_waits(self, channel_number: int, name: str) -> bool:
        """Whether a connection-level callback waits for method ``name`` on the channel.

        The keys pika's ``name_or_value`` gives: str(channel number), the method's NAME.
        True when the table is not the dict expected (pika's own path then decides).
        """
        table = getattr(self.callbacks, "_stack", None)
        if type(table) is not dict:
            return True
        by_method = table.get(str(channel_number))
        return bool(by_method and by_method.get(name))

    def _on_data_available(self, data_in: bytes) -> None:
        """Decode every whole frame received so far (pika's loop, without a copy per frame).

        As in pika, a frame leaves the buffer before it is processed: if a callback
        raises, what is left is the frames after it.
        """
        kept: bytes = self._frame_buffer  # type: ignore[has-type]
        buf = kept + data_in if kept else data_in
        self._frame_buffer = buf
        offset, end = 0, len(buf)
        try:
            while offset < end:
                delivery = self._whole_delivery(buf, offset, end)
                if delivery is _PARTIAL:
                    break  # the rest of a delivery is on its way: wait for it
                if delivery is not None:
                    used, channel, method, properties, body = delivery
                    offset += used
                    _deliver_to(channel, method, properties, body)
                else:
                    used, frame_value = self._next_frame(buf, offset, end)
                    if not frame_value:
                        break  # an incomplete frame: wait for more data
                    offset += used
                    self.bytes_received += used
                    self._process_frame(frame_value)
                if self._frame_buffer is not buf:
                    return  # the connection was torn down by a callback: its buffer was reset
        finally:
            if offset and self._frame_buffer is buf:
                self._frame_buffer = buf[offset:]

    def _next_frame(self, buf: bytes, offset: int, end: int) -> tuple[int, Any]:
        """The frame at ``offset`` decoded pika's way, and its bytes (0, None: incomplete)."""
        if end - offset >= _HEAD and buf[offset : offset + 4] != b"AMQP":
            size = _FRAME_HEAD.unpack_from(buf, offset)[2]
            chunk = buf[offset : offset + _HEAD + size + _END]  # this frame only
        else:
            chunk = buf[offset:]  # too short to tell, or a protocol header: pika decides
        return frame.decode_frame(chunk)

    def _whole_delivery(self, buf: bytes, offset: int, end: int) -> Any:
        """A whole ``basic.deliver`` at ``offset``: its bytes, channel, method, properties
        and body; :data:`_PARTIAL` if ``buf`` ends before such a delivery does; None if
        not one (pika's path then takes the frame).

        Only a delivery whose method, header and one body frame (or none, for an empty
        body) are all in ``buf``, for a known channel whose assembler holds nothing and
        with no connection-level callback waiting for it. The frames are counted as read.
        """
        if end - offset < _HEAD + 4:
            return None
        kind, number, size, method_id = _METHOD_HEAD.unpack_from(buf, offset)
        if kind != _FRAME_METHOD or method_id != _DELIVER:
            return None
        channel = self._channels.get(number)
        if (
            channel is None
            or channel._content_assembler._method_frame is not None
            or self._callback_waits(number, _DELIVER_NAME)
        ):
            return None
        # From here a delivery cut short by the end of ``buf`` is waited for rather than
        # decoded a frame at a time: a bundle is often larger than one read, and the
        # frame-at-a-time path costs a scheduler a fifth of its CPU (py-spy, issue 11).
        # What is kept waiting is at most method + header + one body frame, as pika itself
        # would keep: the body frame at most frame_max (131,072 bytes as negotiated with
        # RabbitMQ's default) plus the two small frames (a few hundred bytes here).
        header = offset + _HEAD + size + _END
        if header + _HEAD + 12 > end:
            return _PARTIAL
        if buf[header - 1] != _FRAME_END:
            return None
        kind, header_number, size, class_id, _weight, body_size = _HEADER_HEAD.unpack_from(
            buf, header
        )
        if kind != _FRAME_HEADER or header_number != number:
            return None
        body = header + _HEAD + size + _END
        if body > end:
            return _PARTIAL
        if buf[body - 1] != _FRAME_END:
            return None
        if class_id != _BASIC:
            return None
        stop = body
        if body_size:
            if body_size > self._body_max_length:
                return None  # several body frames: pika's path
            if body + _HEAD > end:
                return _PARTIAL
            kind, body_number, size = _FRAME_HEAD.unpack_from(buf, body)
            stop = body + _HEAD + size + _END
            if kind != _FRAME_BODY or body_number != number or size != body_size:
                return None
            if stop > end:
                return _PARTIAL
            if buf[stop - 1] != _FRAME_END:
                return None
        method = _deliver(buf, offset + _HEAD + 4)
        properties = _properties(buf, header + _HEAD + 12)
        content = buf[body + _HEAD : stop - _END] if body_size else b""
        self.frames_received += 3 if body_size else 2
        self.bytes_received += stop - offset
        return stop - offset, channel, method, properties, content


def _deliver_to(
    channel: Any, method: spec.Basic.Deliver, properties: spec.BasicProperties, body: bytes
) -> None:
    """Hand a whole delivery to its consumer as the channel's ``_on_deliver`` would.

    A consumer that is registered and not being cancelled is called directly (the
    frame objects ``_on_deliver`` takes are built for nothing else); any other consumer
    tag goes to ``_on_deliver`` itself (it rejects a cancelled consumer's delivery and
    logs an unknown one).
    """
    tag = method.consumer_tag
    consumer = channel._consumers.get(tag)
    if consumer is not None and tag not in channel._cancelled:
        consumer(channel, method, properties, body)
        return
    number = channel.channel_number
    channel._on_deliver(
        frame.Method(number, method), frame.Header(number, len(body), properties), body
    )


def _deliver(buf: bytes, at: int) -> spec.Basic.Deliver:
    """The ``basic.deliver`` whose arguments start at ``at``, as pika's decoder gives it.

    pika's ``Basic.Deliver.decode`` in one function (a third of the cost): three short
    strings and the tag. A string that is not UTF-8 goes pika's way (which keeps it as
    bytes).
    """
    start = at
    n = buf[at]
    consumer_tag = buf[at + 1 : at + 1 + n]
    at += 1 + n
    delivery_tag, bits = _TAG_BITS.unpack_from(buf, at)
    at += 9
    n = buf[at]
    exchange = buf[at + 1 : at + 1 + n]
    at += 1 + n
    n = buf[at]
    routing_key = buf[at + 1 : at + 1 + n]
    try:
        return spec.Basic.Deliver(
            consumer_tag.decode(),
            delivery_tag,
            bits & 1 != 0,
            exchange.decode(),
            routing_key.decode(),
        )
    except UnicodeDecodeError:
        return spec.Basic.Deliver().decode(buf, start)


def _properties(buf: bytes, at: int) -> spec.BasicProperties:
    """The content header's properties starting at ``at``, as pika's decoder gives them.

    Only the fields present are visited (their list cached per flag word), strings
    decoded in line. A second flag word, or a string that is not UTF-8 (pika keeps it as
    bytes), goes pika's way.
    """
    start = at
    flags = _FLAGS.unpack_from(buf, at)[0]
    if flags & 1:
        return spec.BasicProperties().decode(buf, start)
    layout = _LAYOUTS.get(flags)
    if layout is None:
        layout = _LAYOUTS[flags] = tuple((n, k) for f, n, k in _PROPERTY_FIELDS if flags & f)
    properties = spec.BasicProperties()
    at += 2
    try:
        for name, kind in layout:
            if kind is _SHORT:
                n = buf[at]
                setattr(properties, name, buf[at + 1 : at + 1 + n].decode())
                at += 1 + n
            elif kind is _OCTET:
                setattr(properties, name, buf[at])
                at += 1
            elif kind is _STAMP:
                setattr(properties, name, _U64.unpack_from(buf, at)[0])
                at += 8
            else:
                value, at = data.decode_table(buf, at)
                setattr(properties, name, value)
    except UnicodeDecodeError:
        return spec.BasicProperties().decode(buf, start)
    return properties
