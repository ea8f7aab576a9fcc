"""The consumer base of every pika process: connect, consume, reconnect, drain, retry.

Modelled on kombu's ``ConsumerMixin``: a subclass *declares* what it consumes
(:meth:`AmqpService.consumers`, a list of :class:`Consumer`) and the base owns the
rest: the connection and its reconnects with capped backoff
(:class:`~fairway.amqp.backoff.Reconnect`), each to the next broker address of a
cluster (:class:`~fairway.amqp.connection.Brokers`), one channel per consumer (open ->
``prepare`` -> per-consumer ``basic.qos`` -> ``basic.consume``), reconnecting when a
consuming channel closes, periodic timers and side connections started once per
process, one drain on SIGTERM (cancel every consumer, poll :meth:`drained` until true
or ``drain_timeout_s``, then close), and one database retry helper
(:meth:`retrying`). Consumers can also be opened at any time after connecting
(:meth:`open_consumer`; the scheduler consumes its tenant queues on a pool of
channels of its own, :mod:`scheduler.channel_pool`).

One pika ``IOLoop`` lives across reconnects, so callbacks handed in from worker
threads with ``add_callback_threadsafe`` are never lost on a dead loop.

Invariant: nothing here blocks the I/O loop except the topology declaration, which
runs over a short blocking connection *between* asynchronous connections.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
from pika.adapters.select_connection import IOLoop
from pika.channel import Channel
from pika.exceptions import AMQPError

from fairway.amqp.backoff import Backoff, Reconnect
from fairway.amqp.connection import Brokers, declare_topology
from fairway.amqp.fastconn import SelectConnection
from fairway.amqp.side import SideConnection
from fairway.kernel import metrics
from fairway.kernel.settings import Settings

log = logging.getLogger(__name__)

# Signals that start a drain (their numbers, as the wake-up pipe carries them).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

T = TypeVar("T")
OnMessage = Callable[[Channel, Any, Any, bytes], None]
DRAIN_POLL_S = 0.02


class DrainExpired(Exception):
    """A retried call gave up: the service is stopping and its drain deadline passed."""


@dataclass(eq=False)
class Consumer:
    """One declared consumer on its own channel: a queue, its prefetch, its callback.

    The base opens the channel, runs ``prepare(channel, then)`` if given (declare,
    bind, confirm mode ...; it calls ``then()`` when done), sets the per-consumer
    prefetch, then starts consuming. ``start`` and ``cancel`` replace the plain
    ``basic.consume`` / ``basic.cancel`` (the scheduler's recyclable tenant consumers);
    ``on_close`` replaces the default reaction to a closed channel (reconnect).
    ``channel`` and ``tag`` are the live state, reset on every (re)open.
    """

    queue: str
    prefetch: int
    on_message: OnMessage
    prepare: Callable[[Channel, Callable[[], None]], None] | None = None
    start: Callable[[], None] | None = None
    cancel: Callable[[], None] | None = None
    on_close: Callable[[Channel, Exception], None] | None = None
    channel: Channel | None = None
    tag: str | None = None

    @property
    def live(self) -> bool:
        """True while the consumer's channel is open."""
        return self.channel is not None and self.channel.is_open

    def stop_consuming(self) -> None:
        """Cancel (drain): deliveries already received are still handled and acked."""
        if self.cancel is not None:
            self.cancel()
        elif self.live and self.tag is not None:
            assert self.channel is not None
            self.channel.basic_cancel(self.tag)


@dataclass
class _Timer:
    interval: float
    callback: Callable[[], None]
    first: float


class AmqpService:
    """Base class of every consumer process (relay, scheduler, monitor, archiver).

    Hooks for subclasses: :meth:`consumers` (declared consumers, opened on every
    connect), :meth:`on_connected` (more set-up after the consumers), :meth:`drained`
    (polled by the drain), :meth:`after_drain` (release threads), and
    :meth:`on_connection_lost` (forget per-connection state). In ``__init__``:
    :meth:`every` for periodic timers and :meth:`add_side_connection`.
    """

    name = "fairway"
    drain_timeout_s = 10.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ioloop = IOLoop()
        self.connection: pika.SelectConnection | None = None
        self.stopping = False
        self.drain_deadline = float("inf")
        self.stop_event = threading.Event()  # set once the drain ends: retries stop waiting
        # Where to connect: the next broker address after each loss (a cluster's nodes).
        self.brokers = Brokers(settings, self.name)
        self._reconnect = Reconnect(self.name, self.ioloop.call_later, self._connect)
        self._timers: list[_Timer] = []
        self._sides: list[SideConnection] = []
        self._started = False
        self._consuming: list[Consumer] = []  # consumers with a channel, for the drain

    # -- lifecycle -------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT start a drain instead of killing the process.

        Call on the main thread, which runs the I/O loop. The Python-level handler does
        nothing: it runs on that thread between any two bytecodes, possibly inside
        pika's ``wake_threadsafe`` while it holds its (non-reentrant) lock, so calling
        :meth:`stop` from it could deadlock the process (seen once: a scheduler that
        ignored SIGTERM until killed). Python also writes the signal's number to a
        wake-up pipe, which the loop watches and turns into a drain.
        """
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self.ioloop.add_handler(read_fd, self._on_wakeup_fd, IOLoop.READ)
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda *_: None)

    def _on_wakeup_fd(self, fd: int, _events: int) -> None:
        try:
            received = os.read(fd, 512)
        except BlockingIOError:
            return
        if any(number in STOP_SIGNALS for number in received):
            self._stop_in_loop()

    def serve(self, metrics_port: int) -> None:
        """Run as a process: signals first, then metrics, then the loop.

        Once the metrics endpoint answers (what tests and orchestrators wait for),
        a SIGTERM already means a clean drain.
        """
        self.install_signal_handlers()
        metrics.serve(metrics_port)
        self.run()

    def run(self) -> None:
        """Serve until :meth:`stop` (or a signal, see above) and a clean drain."""
        self.ioloop.add_callback_threadsafe(self._connect)
        try:
            self.ioloop.start()
        except BaseException:
            # A callback raised out of the loop: nothing can be acked any more. Stop the
            # worker threads' retries too, or the process would hang on them at exit
            # instead of ending (and being restarted); the broker requeues the unacked.
            log.exception("I/O loop failed; stopping", extra={"service": self.name})
            self.stopping = True
            self._release()
            raise
        log.info("stopped", extra={"service": self.name})

    def stop(self) -> None:
        """Ask the service to drain and exit; safe from signal handlers and threads."""
        self.ioloop.add_callback_threadsafe(self._stop_in_loop)

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` on the I/O loop (from any thread)."""
        self.ioloop.add_callback_threadsafe(callback)

    def close(self) -> None:
        """Close the connection (if open) and end :meth:`run`."""
        self.stopping = True
        if self.connection is not None and self.connection.is_open:
            self.connection.close()
        else:
            self.ioloop.stop()

    # -- declarations (call in __init__) -----------------------------------------
    def every(
        self, interval: float, callback: Callable[[], None], first: float | None = None
    ) -> None:
        """Run ``callback`` every ``interval`` s (first after ``first``) until stopping.

        Timers start with the first connection and live for the process: reconnects
        do not start a second chain.
        """
        self._timers.append(_Timer(interval, callback, interval if first is None else first))

    def add_side_connection(self, side: SideConnection) -> SideConnection:
        """Start ``side`` with the first connection; close it after the drain."""
        self._sides.append(side)
        return side

    # -- hooks -----------------------------------------------------------------
    def consumers(self) -> list[Consumer]:
        """The consumers to open on every connect (declarations, reused across them)."""
        return []

    def on_connected(self, connection: pika.SelectConnection) -> None:
        """The connection is open and the declared consumers are being opened."""

    def on_connection_lost(self) -> None:
        """The connection is gone: the broker requeues every unacked delivery."""

    def drained(self) -> bool:
        """True once nothing received is still being handled.

        Polled every ``DRAIN_POLL_S`` after the consumers were cancelled; it may push
        remaining work along first (flush partial batches).
        """
        return True

    def after_drain(self) -> None:
        """The drain ended (or timed out): shut down worker threads."""

    # -- consumers -----------------------------------------------------------------
    def open_consumer(self, consumer: Consumer) -> None:
        """Open a channel for ``consumer`` on the current connection and start it."""
        assert self.connection is not None

        def on_open(channel: Channel) -> None:
            channel.add_on_close_callback(lambda ch, why: self._consumer_closed(consumer, ch, why))
            self.consume_on(channel, consumer)

        self.connection.channel(on_open_callback=on_open)

    def consume_on(self, channel: Channel, consumer: Consumer) -> None:
        """Prepare, set the prefetch and start ``consumer`` on an open ``channel``.

        For channels the base did not open (a side connection's); their close is the
        opener's business.
        """
        consumer.channel, consumer.tag = channel, None
        if consumer not in self._consuming:
            self._consuming.append(consumer)

        def set_qos() -> None:
            # Per-consumer prefetch: quorum queues refuse a channel-wide (global) one.
            channel.basic_qos(
                prefetch_count=consumer.prefetch, global_qos=False, callback=lambda _f: start()
            )

        def start() -> None:
            replaced = consumer.channel is not channel  # re-opened since: that one starts
            if self.stopping or replaced or not channel.is_open:
                return
            if consumer.start is not None:
                consumer.start()
            else:
                consumer.tag = channel.basic_consume(consumer.queue, consumer.on_message)
            log.info("consuming", extra={"service": self.name, "queue": consumer.queue})

        if consumer.prepare is not None:
            consumer.prepare(channel, set_qos)
        else:
            set_qos()

    def reconnect_on_channel_close(self, _channel: Any, why: Exception) -> None:
        """A consuming channel closed under us: reconnect, which declares and consumes anew.

        Unacked deliveries of the closed channel are requeued by the broker.
        """
        if self.connection is not None and self.connection.is_open and not self.stopping:
            log.warning(
                "channel closed; reconnecting", extra={"service": self.name, "why": repr(why)}
            )
            self.connection.close()

    def _consumer_closed(self, consumer: Consumer, channel: Channel, why: Exception) -> None:
        if consumer.channel is channel:
            consumer.channel, consumer.tag = None, None
            if consumer in self._consuming:
                self._consuming.remove(consumer)
        if consumer.on_close is not None:
            consumer.on_close(channel, why)
        else:
            self.reconnect_on_channel_close(channel, why)

    # -- database retries (worker threads) -------------------------------------------
    def retrying(
        self,
        what: str,
        call: Callable[[], T],
        on_error: Callable[[Exception], None] | None = None,
    ) -> T:
        """Run ``call`` until it returns (database down: capped backoff between tries).

        ``on_error`` sees every failure (e.g. a ``db_up`` gauge). Raises
        :class:`DrainExpired` once the service is stopping and its drain is over.
        """
        backoff = Backoff(base=0.1, cap=self.settings.db_backoff_max_s)
        while True:
            try:
                return call()
            except Exception as exc:
                if on_error is not None:
                    on_error(exc)
                if self.stopping and (
                    time.monotonic() > self.drain_deadline or self.stop_event.is_set()
                ):
                    raise DrainExpired(what) from exc
                delay = backoff.next()
                log.warning(f"{what} failed", extra={"error": repr(exc), "retry_s": delay})
                self.stop_event.wait(delay)

    # -- stopping ----------------------------------------------------------------------
    def begin_stop(self) -> None:
        """Cancel every consumer, then wait for :meth:`drained` (bounded), then close."""
        self.drain_deadline = time.monotonic() + self.drain_timeout_s
        for consumer in list(self._consuming):
            consumer.stop_consuming()
        self._poll_drain()

    def _poll_drain(self) -> None:
        if self.drained() or time.monotonic() > self.drain_deadline:
            self._release()
            self.close()
        else:
            self.ioloop.call_later(DRAIN_POLL_S, self._poll_drain)

    def _release(self) -> None:
        """End retries, worker threads and side connections (once, when stopping)."""
        if self.stop_event.is_set():
            return
        self.stop_event.set()
        self.after_drain()
        for side in self._sides:
            side.close()

    # -- internals -------------------------------------------------------------
    def _stop_in_loop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping", extra={"service": self.name})
        if self.connection is not None and self.connection.is_open:
            self.begin_stop()
        else:  # nothing can be acked without a connection: nothing to drain
            self._release()
            self.ioloop.stop()

    def _connect(self) -> None:
        if self.stopping:
            self.ioloop.stop()
            return
        try:  # on the broker this connection is about to use
            declare_topology(self.settings, self.brokers.url)
        except (AMQPError, OSError) as exc:
            self._retry(f"topology declaration failed: {exc!r}")
            return
        self.connection = SelectConnection(
            self.brokers.parameters(),
            on_open_callback=self._on_open,
            on_open_error_callback=lambda _c, exc: self._retry(f"connect failed: {exc!r}"),
            on_close_callback=self._on_closed,
            custom_ioloop=self.ioloop,
        )

    def _retry(self, why: str) -> None:
        """The connection (or its set-up) failed: the next address, after the backoff."""
        self.brokers.lost()
        if self.stopping:
            self.ioloop.stop()
            return
        self._reconnect.schedule(f"{why} (next: {self.brokers.address})")

    def _on_open(self, connection: pika.SelectConnection) -> None:
        self._reconnect.succeeded()
        self.brokers.opened()
        log.info("connected", extra={"service": self.name, "broker": self.brokers.address})
        if not self._started:  # once per process: reconnects start no second chain
            self._started = True
            for side in self._sides:
                side.start()
            for timer in self._timers:
                self.ioloop.call_later(timer.first, lambda t=timer: self._run_timer(t))
        for consumer in self.consumers():
            self.open_consumer(consumer)
        self.on_connected(connection)

    def _run_timer(self, timer: _Timer) -> None:
        if self.stopping:
            return
        timer.callback()
        self.ioloop.call_later(timer.interval, lambda: self._run_timer(timer))

    def _on_closed(self, _connection: pika.SelectConnection, reason: Exception) -> None:
        self._consuming = [c for c in self._consuming if c.live]  # side connections' stay
        self.on_connection_lost()
        self.connection = None
        if self.stopping:
            self.ioloop.stop()
        else:
            self._retry(f"connection closed: {reason!r}")
