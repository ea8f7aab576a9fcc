"""pika's ``SelectConnection`` less two per-frame costs on the receiving side.

* **The connection-callback check.** For every method frame it receives (each
  ``basic.deliver``, each ``basic.ack`` confirm) pika asks its ``CallbackManager``
  whether a connection-level callback waits for it. The check sanitises the channel
  number and the method through ``name_or_value``, which raises and catches a
  ``TypeError`` for each: ~10 % of the relay's CPU in a drain (py-spy, issue 11). Here
  the same question is answered from the callback table directly, and only a frame with
  a callback waiting goes the original way, so what runs is unchanged.
* **A delivery's three frames.** pika decodes a received buffer one frame at a time,
  cutting each frame off the front of the buffer (a copy of the rest), and passes each
  through ``_process_frame``, the channel and its content assembler: about twenty
  Python calls per frame, three frames (method, header, body) per message, more CPU
  than the scheduler's own work on a message (py-spy, many_queues, issue 11). Here the
  buffer is read at an offset, and a ``basic.deliver`` whose header and single body
  frame are already in the buffer goes straight to the channel's ``_on_deliver``, the
  method pika's assembler ends in, with the same frame objects. Decoding the message
  properties (a generic field-by-field walk, its headers table included) cost more than
  all the rest: a producer sends the same property bytes message after message, so the
  decoded properties are kept by their bytes (a few hundred kinds at most) and each
  delivery gets its own copy (its own headers dict too). Anything else (other
  frames, a delivery split across reads or body frames, a channel mid-message, a
  callback waiting for the method) takes pika's own path, frame by frame.
"""

from __future__ import annotations

import struct
from typing import Any

import pika
from pika import channel as pika_channel
from pika import frame, spec

_HEAD = struct.Struct(">BHL")  # frame type, channel number, payload size
_HEAD_SIZE = 7  # then the payload, then FRAME_END
_UINT32 = struct.Struct(">I")
_UINT64 = struct.Struct(">Q")
_DELIVER = spec.Basic.Deliver.INDEX
_UINT64_AT = _UINT64.unpack_from
_PROPERTIES_KEPT = 256  # kinds of property bytes kept decoded; then they start again
_decoded_properties: dict[bytes, spec.BasicProperties] = {}
_PROTOCOL_HEADER = 0x41  # b"A" of b"AMQP": a protocol header, not a frame
# The pika internals the delivery path relies on (pika 1.x); without them, pika's path.
_FAST_DELIVERIES = hasattr(pika_channel.Channel, "_on_deliver") and hasattr(
    pika_channel.ContentFrameAssembler(), "_method_frame"
)


class SelectConnection(pika.SelectConnection):
    """``pika.SelectConnection`` with a cheap "no callback waits for this frame" path and
    whole deliveries handed to their channel in one step."""

    _frame_buffer: bytes  # pika's: received bytes not yet a whole frame

    def _process_callbacks(self, frame_value: Any) -> bool:
        if type(frame_value) is frame.Method and not self._callback_waits(
            frame_value.channel_number, frame_value.method.NAME
        ):
            return False
        return super()._process_callbacks(frame_value)

    def _callback_waits(self, channel_number: int, name: str) -> bool:
        """Whether a connection-level callback waits for method ``name`` on the channel
        (True when pika's table is not what this reads: then pika answers)."""
        # The keys pika's ``name_or_value`` gives: str(channel number), the method's NAME.
        table = getattr(self.callbacks, "_stack", None)
        if type(table) is not dict:
            return True
        by_method = table.get(str(channel_number))
        return bool(by_method and by_method.get(name))

    def _on_data_available(self, data_in: bytes) -> None:
        """Process every whole frame received so far; keep the rest for the next read.

        pika's loop, reading at an offset: a closed connection resets ``_frame_buffer``
        while a frame is processed, and then nothing more of this buffer is.
        """
        buf = self._frame_buffer + data_in if self._frame_buffer else data_in
        self._frame_buffer = buf
        offset, size = 0, len(buf)
        while offset < size and self._frame_buffer is buf:
            used = self._delivery_at(buf, offset, size) if _FAST_DELIVERIES else 0
            if used:
                offset += used
                continue
            used, frame_value = frame.decode_frame(_one_frame(buf, offset, size))
            if not frame_value:
                break
            offset += used
            self.bytes_received += used
            self._process_frame(frame_value)
        if self._frame_buffer is buf:
            self._frame_buffer = buf[offset:]

    def _delivery_at(self, buf: bytes, offset: int, size: int) -> int:
        """Hand the ``basic.deliver`` at ``offset`` to its channel if its header and one
        body frame follow in ``buf``; return the bytes it took (0: not such a delivery,
        pika's path takes the frame)."""
        if size - offset < _HEAD_SIZE + 4:
            return 0
        kind, number, length = _HEAD.unpack_from(buf, offset)
        if kind != spec.FRAME_METHOD or _UINT32.unpack_from(buf, offset + 7)[0] != _DELIVER:
            return 0
        header = offset + _HEAD_SIZE + length + 1
        if size - header < _HEAD_SIZE + 12:
            return 0
        kind, header_number, length = _HEAD.unpack_from(buf, header)
        body = header + _HEAD_SIZE + length + 1
        if (
            kind != spec.FRAME_HEADER
            or header_number != number
            or length < 14  # class, weight, body size, property flags
            or size - body < _HEAD_SIZE
        ):
            return 0
        kind, body_number, length = _HEAD.unpack_from(buf, body)
        end = body + _HEAD_SIZE + length + 1
        body_size = _UINT64.unpack_from(buf, header + _HEAD_SIZE + 4)[0]
        if (
            kind != spec.FRAME_BODY
            or body_number != number
            or end > size
            or length != body_size  # empty, or in several body frames
            or buf[header - 1] != spec.FRAME_END
            or buf[body - 1] != spec.FRAME_END
            or buf[end - 1] != spec.FRAME_END
        ):
            return 0
        channel = self._channels.get(number)
        if (
            channel is None
            or getattr(channel._content_assembler, "_method_frame", True) is not None
            or self._callback_waits(number, spec.Basic.Deliver.NAME)
        ):
            return 0
        method = _deliver(buf, offset + _HEAD_SIZE + 4)
        properties = _properties(buf[header + _HEAD_SIZE + 12 : body - 1])
        self.frames_received += 3
        self.bytes_received += end - offset
        channel._on_deliver(
            frame.Method(number, method),
            frame.Header(number, body_size, properties),
            buf[body + _HEAD_SIZE : end - 1],
        )
        return end - offset


def _deliver(buf: bytes, at: int) -> spec.Basic.Deliver:
    """``basic.deliver``'s arguments at ``at``, read as pika's ``Deliver.decode`` reads them."""
    consumer_tag, at = _short_string(buf, at)
    delivery_tag = _UINT64_AT(buf, at)[0]
    redelivered = bool(buf[at + 8] & 1)
    exchange, at = _short_string(buf, at + 9)
    routing_key, _ = _short_string(buf, at)
    return spec.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)


def _short_string(buf: bytes, at: int) -> tuple[str | bytes, int]:
    """An AMQP short string and the offset after it: text, or its bytes when not UTF-8
    (as pika's ``decode_short_string``)."""
    end = at + 1 + buf[at]
    raw = buf[at + 1 : end]
    try:
        return raw.decode("utf8"), end
    except UnicodeDecodeError:
        return raw, end


def _properties(raw: bytes) -> spec.BasicProperties:
    """The message properties encoded as ``raw`` (a content header's property flags and
    fields): decoded once per kind of bytes, a copy per delivery."""
    known = _decoded_properties.get(raw)
    if known is None:
        if len(_decoded_properties) >= _PROPERTIES_KEPT:
            _decoded_properties.clear()
        known = spec.BasicProperties()
        known.decode(raw)
        _decoded_properties[raw] = known
    mine = object.__new__(spec.BasicProperties)
    mine.__dict__.update(known.__dict__)
    if known.headers is not None:
        mine.headers = dict(known.headers)
    return mine


def _one_frame(buf: bytes, offset: int, size: int) -> bytes:
    """The frame at ``offset`` as pika's ``decode_frame`` takes it: cut to its own length
    when its head says it (no copy of the rest of the buffer per frame)."""
    if size - offset >= _HEAD_SIZE and buf[offset] != _PROTOCOL_HEADER:
        end = offset + _HEAD_SIZE + _HEAD.unpack_from(buf, offset)[2] + 1
        return buf[offset : min(end, size)]
    return buf[offset:]
