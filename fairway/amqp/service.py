"""Run loop for asynchronous pika services: connect, declare, reconnect, stop.

Modelled on kombu's ``ConsumerMixin.run()``: a stop flag, reconnects with capped
exponential backoff on connection errors, and hooks for subclasses. One pika
``IOLoop`` lives across reconnects, so callbacks handed in from worker threads with
``add_callback_threadsafe`` are never lost on a dead loop.

Invariant: nothing here blocks the I/O loop except the topology declaration, which
runs over a short blocking connection *between* asynchronous connections.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.select_connection import IOLoop
from pika.exceptions import AMQPError

from fairway.amqp.backoff import Backoff
from fairway.amqp.connection import declare_topology, parameters
from fairway.kernel import metrics
from fairway.kernel.settings import Settings

log = logging.getLogger(__name__)


class AmqpService:
    """Base class of the relay and the scheduler.

    Subclasses implement :meth:`on_connected` (open channels, start consuming),
    :meth:`on_connection_lost` (forget per-connection state) and :meth:`begin_stop`
    (drain, then call :meth:`close`).
    """

    name = "fairway"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ioloop = IOLoop()
        self.connection: pika.SelectConnection | None = None
        self.stopping = False
        self._backoff = Backoff()

    # -- lifecycle -------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT start a drain instead of killing the process."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

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
        self.ioloop.start()
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

    # -- hooks -----------------------------------------------------------------
    def on_connected(self, connection: pika.SelectConnection) -> None:
        """The connection is open: set up channels and consumers."""
        raise NotImplementedError

    def reconnect_on_channel_close(self, _channel: Any, why: Exception) -> None:
        """A consuming channel closed under us: reconnect, which declares and consumes anew.

        Register with ``channel.add_on_close_callback``; unacked deliveries of the closed
        channel are requeued by the broker.
        """
        if self.connection is not None and self.connection.is_open and not self.stopping:
            log.warning(
                "channel closed; reconnecting", extra={"service": self.name, "why": repr(why)}
            )
            self.connection.close()

    def on_connection_lost(self) -> None:
        """The connection is gone: the broker requeues every unacked delivery."""

    def begin_stop(self) -> None:
        """Drain and then call :meth:`close`; the default closes at once."""
        self.close()

    # -- internals -------------------------------------------------------------
    def _stop_in_loop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping", extra={"service": self.name})
        if self.connection is not None and self.connection.is_open:
            self.begin_stop()
        else:
            self.ioloop.stop()

    def _connect(self) -> None:
        if self.stopping:
            self.ioloop.stop()
            return
        try:
            declare_topology(self.settings)
        except (AMQPError, OSError) as exc:
            self._retry(f"topology declaration failed: {exc!r}")
            return
        self.connection = pika.SelectConnection(
            parameters(self.settings, self.name),
            on_open_callback=self._on_open,
            on_open_error_callback=lambda _c, exc: self._retry(f"connect failed: {exc!r}"),
            on_close_callback=self._on_closed,
            custom_ioloop=self.ioloop,
        )

    def _retry(self, why: str) -> None:
        if self.stopping:
            self.ioloop.stop()
            return
        delay = self._backoff.next()
        log.warning("reconnecting", extra={"service": self.name, "why": why, "in_s": delay})
        self.ioloop.call_later(delay, self._connect)

    def _on_open(self, connection: pika.SelectConnection) -> None:
        self._backoff.reset()
        log.info("connected", extra={"service": self.name})
        self.on_connected(connection)

    def _on_closed(self, _connection: pika.SelectConnection, reason: Exception) -> None:
        self.on_connection_lost()
        self.connection = None
        if self.stopping:
            self.ioloop.stop()
        else:
            self._retry(f"connection closed: {reason!r}")
