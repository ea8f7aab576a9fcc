"""pika's transport with its queued frames sent joined (fairway.amqp.joined_writes)."""

from __future__ import annotations

import errno
from collections import deque
from typing import Any

from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport, _AsyncSSLTransport

from fairway.amqp.joined_writes import JOIN_BELOW, MAX_JOINED_BYTES, READ_BYTES, join_writes


class Socket:
    """What the transport uses of a socket: ``send`` (recorded; EAGAIN once when
    ``block``; ``accept`` bytes at most, once, and then full: EAGAIN) and ``fileno``."""

    def __init__(self, accept: int = 1 << 30) -> None:
        self.sent: list[bytes] = []
        self.accept = accept
        self.block = False

    def send(self, data: bytes) -> int:
        if self.block:
            self.block = False
            raise BlockingIOError(errno.EAGAIN, "would block")
        taken = bytes(data[: self.accept])
        self.sent.append(taken)
        if len(taken) < len(data):
            self.block, self.accept = True, 1 << 30
        return len(taken)

    def fileno(self) -> int:
        return 99


class Poller:
    """The I/O services' writer watch, recorded."""

    def __init__(self) -> None:
        self.writer: Any = None

    def set_reader(self, _fd: int, _on_readable: Any) -> None:
        pass

    def set_writer(self, _fd: int, on_writable: Any) -> None:
        self.writer = on_writable

    def remove_writer(self, _fd: int) -> bool:
        self.writer = None
        return True


def transport(sock: Socket) -> tuple[_AsyncPlaintextTransport, Poller]:
    poller = Poller()
    made = _AsyncPlaintextTransport(sock, None, poller)  # type: ignore[arg-type]
    assert join_writes(made)
    return made, poller


FRAMES = [b"method-%d" % i + bytes(i) for i in range(150)]


def test_the_frames_of_a_turn_go_in_one_send_in_order() -> None:
    sock = Socket()
    made, poller = transport(sock)
    for frame in FRAMES:
        made.write(frame)
    poller.writer()
    assert sock.sent == [b"".join(FRAMES)]  # pika alone: one send per frame
    assert made.get_write_buffer_size() == 0 and poller.writer is None


def test_a_partial_send_keeps_the_rest_in_order() -> None:
    sock = Socket(accept=100)
    made, poller = transport(sock)
    for frame in FRAMES[:20]:
        made.write(frame)
    poller.writer()
    assert sock.sent == [b"".join(FRAMES[:20])[:100]] and poller.writer is not None
    poller.writer()
    assert b"".join(sock.sent) == b"".join(FRAMES[:20])
    assert len(sock.sent) == 2  # the first 100 bytes, then the rest joined


def test_a_send_that_would_block_loses_nothing() -> None:
    sock = Socket()
    made, poller = transport(sock)
    made.write(b"a" * 10)
    made.write(b"b" * 10)
    sock.block = True
    poller.writer()
    made.write(b"c" * 10)  # queued behind the joined chunk
    poller.writer()
    assert sock.sent == [b"a" * 10 + b"b" * 10 + b"c" * 10]
    assert made.get_write_buffer_size() == 0


def test_chunks_beyond_the_bound_are_not_joined() -> None:
    sock = Socket()
    made, poller = transport(sock)
    part = MAX_JOINED_BYTES // 4 - 1_000  # under JOIN_BELOW: joined, four at most
    for i in range(6):
        made.write(bytes([i]) * part)
    poller.writer()
    assert [len(s) for s in sock.sent] == [4 * part, part, part]  # a fifth would pass it


def test_a_large_first_chunk_is_sent_as_it_is_and_what_follows_joined() -> None:
    sock = Socket()
    made, poller = transport(sock)
    large = b"L" * JOIN_BELOW
    made.write(large)
    for frame in FRAMES:
        made.write(frame)
    poller.writer()
    assert sock.sent == [large, b"".join(FRAMES)]  # the large one not copied into a join


def test_a_large_chunk_behind_small_ones_is_not_copied_into_a_join() -> None:
    sock = Socket()
    made, poller = transport(sock)
    large = [bytes([i]) * (JOIN_BELOW + 64) for i in range(3)]
    made.write(b"ack-frame")
    for chunk in large:
        made.write(chunk)
    made.write(b"heartbeat")
    poller.writer()
    assert sock.sent == [b"ack-frame", *large, b"heartbeat"]  # each large one sent alone


def test_a_large_leftover_of_a_partial_send_is_not_joined_again() -> None:
    sock = Socket(accept=10_000)
    made, poller = transport(sock)
    part = JOIN_BELOW - 1
    for i in range(3):
        made.write(bytes([i]) * part)
    poller.writer()  # joined, 10,000 bytes taken, the rest requeued
    made.write(b"a" * 10)
    made.write(b"b" * 10)
    poller.writer()
    assert [len(s) for s in sock.sent] == [10_000, 3 * part - 10_000, 20]
    assert (
        b"".join(sock.sent) == b"".join(bytes([i]) * part for i in range(3)) + b"a" * 10 + b"b" * 10
    )


def test_tls_and_unknown_transports_are_left_as_they_are() -> None:
    tls = _AsyncSSLTransport.__new__(_AsyncSSLTransport)
    tls._tx_buffers = deque()
    assert not join_writes(tls)
    assert not join_writes(object())


def test_the_event_publishers_connection_is_fastconns(monkeypatch: Any) -> None:
    """The side connection (the event publisher's) is built as fastconn's class, not
    pika's: its writes joined, its deliveries decoded in place."""
    import pika
    from pika.adapters.select_connection import IOLoop

    from fairway.amqp import fastconn
    from fairway.amqp.connection import Brokers
    from fairway.amqp.side import SideConnection
    from fairway.kernel.settings import Settings

    built: list[type] = []

    def record(self: Any, *_args: Any, **_kwargs: Any) -> None:
        built.append(type(self))  # no socket: only which class is built

    monkeypatch.setattr(pika.SelectConnection, "__init__", record)
    ioloop = IOLoop()
    try:
        side = SideConnection(Brokers(Settings(), "t-side"), ioloop)
        side.start()
    finally:
        ioloop.close()
    assert built == [fastconn.SelectConnection]
    assert type(side.connection) is fastconn.SelectConnection


def test_fastconns_connection_sends_joined(monkeypatch: Any) -> None:
    """fastconn's connection joins its transport's writes when the stream is handed over."""
    from fairway.amqp import fastconn

    conn = object.__new__(fastconn.SelectConnection)  # no socket: only the hand-over runs
    monkeypatch.setattr(conn, "_on_stream_connected", lambda: None, raising=False)
    sock = Socket()
    made = _AsyncPlaintextTransport(sock, None, Poller())  # type: ignore[arg-type]
    conn._proto_connection_made(made)
    assert conn._transport is made
    made.write(b"a")
    made.write(b"b")
    made._on_socket_writable()
    assert sock.sent == [b"ab"]


class Reader(Socket):
    """A socket holding ``pending`` bytes to read; records each ``recv`` size asked."""

    def __init__(self, pending: bytes) -> None:
        super().__init__()
        self.pending, self.asked = pending, []  # type: ignore[var-annotated]

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        if not self.pending:
            raise BlockingIOError(errno.EAGAIN, "would block")
        data, self.pending = self.pending[:size], self.pending[size:]
        return data


class Protocol:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.received.append(data)


def test_a_bundle_is_read_in_one_recv() -> None:
    bundle = bytes(range(256)) * 24  # 6 KB: two of pika's 4 KB reads
    sock, protocol = Reader(bundle), Protocol()
    made = _AsyncPlaintextTransport(sock, protocol, Poller())  # type: ignore[arg-type]
    assert join_writes(made)
    made._on_socket_readable()
    assert protocol.received == [bundle]
    assert sock.asked == [READ_BYTES, READ_BYTES]  # the second: nothing more (EAGAIN)
