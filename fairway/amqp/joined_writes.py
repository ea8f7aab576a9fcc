"""One ``send()`` per turn of the I/O loop instead of one per AMQP frame, and reads of
:data:`READ_BYTES` instead of pika's 4 KB.

pika queues every frame it writes as a chunk of its own and, once the socket is
writable, sends the chunks one ``send()`` each: a publish is three system calls
(method, header, body), an ack one. A scheduler batch publishes one event per device
and acks on every channel it touched, all in one turn of the loop: ~150 system calls,
a fifth of the scheduler's CPU in a drain (py-spy ``--native``, issue 11). Here the
chunks waiting when the socket turns writable are joined (up to
:data:`MAX_JOINED_BYTES`; a first chunk of :data:`JOIN_BELOW` or more goes alone, the rest
behind it joined) and sent together. The bytes, their order and when they are
sent are pika's; only the number of system calls changes.

pika reads its socket 4 KB at a time: a bundle of a few kilobytes spans two reads, and
each read is a system call and a pass through the connection's receive path. A
larger read takes what the kernel already holds in one.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport

# Beyond this the chunks go one by one, as pika sends them: a partial send requeues the
# rest of a chunk as a copy, and a joined backlog of megabytes would be copied per send.
MAX_JOINED_BYTES = 256 * 1024
# A first chunk this large is sent as it is (the chunks behind it joined): joining small
# frames onto it would copy it (a large leftover of a partial send, or a burst of events
# written at once) to save one system call in many kilobytes.
JOIN_BELOW = 64 * 1024
# pika still stops reading once 100 KB are read in one readable event (its
# _MAX_CONSUME_BYTES, checked before each read), so other sockets are not starved: with
# 64 KB reads, at most 128 KB per readable event.
READ_BYTES = 64 * 1024


def join_writes(transport: Any) -> bool:
    """Make ``transport`` send its queued chunks joined and read :data:`READ_BYTES` at a
    time; False (left as it is) unless it is pika's plaintext transport with the chunk
    queue expected.

    TLS is left alone: a TLS write that must be retried is retried with the same buffer,
    which joining more chunks onto it would change.
    """
    buffers = getattr(transport, "_tx_buffers", None)
    if type(transport) is not _AsyncPlaintextTransport or type(buffers) is not deque:
        return False
    produce = transport._produce

    def produce_joined() -> None:
        if len(buffers) > 1:
            if len(buffers[0]) < JOIN_BELOW:
                _join_front(buffers)
            else:  # sent as it is; what waits behind it joined
                head = buffers.popleft()
                _join_front(buffers)
                buffers.appendleft(head)
        produce()

    transport._produce = produce_joined
    transport._MAX_RECV_BYTES = READ_BYTES
    return True


def _join_front(buffers: deque[bytes]) -> None:
    """Join the chunks at the front of ``buffers`` into one, up to :data:`MAX_JOINED_BYTES`
    and up to the first chunk of :data:`JOIN_BELOW` or more behind the first (a large
    chunk is never copied into a join: it goes in a send of its own)."""
    count = size = 0
    for chunk in buffers:
        if count and (len(chunk) >= JOIN_BELOW or size + len(chunk) > MAX_JOINED_BYTES):
            break
        count += 1
        size += len(chunk)
    if count > 1:
        joined = b"".join([buffers.popleft() for _ in range(count)])
        buffers.appendleft(joined)
