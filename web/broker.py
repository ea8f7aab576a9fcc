"""RabbitMQ for the web app: one long-lived connection per app, shared under a lock.

Few requests touch the broker: user and subscription changes (bind/unbind on
``user.<id>``) and ``/api/push-token`` (is ``user.<id>`` there? re-create it after a
broker restart). The last is asked by every browser tab on every (re)connect, so a
connection per call (TCP, AMQP handshake, a broker-side process) would let anyone
logged in make the broker open and close connections as fast as they can ask. Instead
the app keeps one ``BlockingConnection`` (a Flask extension, ``app.extensions``), opened
on first use. pika connections are not thread-safe, so waitress threads take turns with
a lock; every use is a few round trips on an open connection. A connection the broker
dropped (restart, missed heartbeats while idle, a cluster node gone) is re-opened, on
the first broker address that answers from the next one on, and the work retried once:
everything done here is idempotent (passive declares, binds, unbinds, the bindings
record, see :mod:`fairway.domain.permissions`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

import pika
from flask import Flask, Response, current_app
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPConnectionError, ChannelWrongStateError, ConnectionWrongStateError

from fairway.amqp.connection import Brokers, open_blocking
from fairway.kernel.settings import Settings
from web.errors import error_response

log = logging.getLogger(__name__)

T = TypeVar("T")
EXTENSION = "fairway_broker"
# The connection is gone (or was never there): re-open it and try again, once.
LOST = (AMQPConnectionError, ConnectionWrongStateError)


class Broker:
    """One lazily opened connection and channel, used by one thread at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.brokers = Brokers(settings, "fairway-web")
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self.opened = 0  # connections opened so far (tests check it stays small)

    def run(self, work: Callable[[BlockingChannel], T]) -> T:
        """``work(channel)`` on the shared connection; re-connect and retry once if lost.

        ``work`` may use ``channel.connection`` for throwaway channels (a passive declare
        that fails closes its channel). A channel closed by the broker is re-opened on
        the next call; only a lost connection is retried.
        """
        with self._lock:
            try:
                return work(self._open_channel())
            except LOST as exc:
                log.info("broker connection lost; re-opening", extra={"why": repr(exc)})
                self._drop()
                self.brokers.lost()
            return work(self._open_channel())

    def _open_channel(self) -> BlockingChannel:
        if self._connection is None or not self._connection.is_open:
            self._drop()
            self._connection = open_blocking(self.brokers)
            self.brokers.opened()
            self.opened += 1
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
        return self._channel

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with suppress(AMQPConnectionError, ChannelWrongStateError, ConnectionWrongStateError):
                connection.close()

    def close(self) -> None:
        """Close the connection (tests, shutdown)."""
        with self._lock:
            self._drop()


def init_app(app: Flask) -> None:
    """Give the app its :class:`Broker` (opened on first use, not here); a broker that
    cannot be reached answers 503."""
    app.extensions[EXTENSION] = Broker(app.config["FAIRWAY_SETTINGS"])

    @app.errorhandler(AMQPConnectionError)
    def _unreachable(_exc: AMQPConnectionError) -> Response:
        return error_response(503, "broker_unavailable", "the message broker is unreachable, retry")


def get_broker() -> Broker:
    """The current app's broker connection."""
    broker: Broker = current_app.extensions[EXTENSION]
    return broker
