"""Capped exponential backoff, and the one reconnect policy built on it.

:class:`Reconnect` is shared by every connection that re-opens itself: the consumer
base (:class:`fairway.amqp.service.AmqpService`), side connections
(:class:`fairway.amqp.side.SideConnection`) on pika's I/O loop, and the push gateway on
Twisted's reactor. Both loops schedule with ``call_later(delay, callback)``, so the
delays, the scheduling and the log line are the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CallLater = Callable[[float, Callable[[], None]], Any]


class Backoff:
    """Capped exponential backoff: 0.5 s, 1 s, 2 s ... ``cap``; reset on success."""

    def __init__(self, base: float = 0.5, cap: float = 10.0) -> None:
        self.base, self.cap, self._n = base, cap, 0

    def next(self) -> float:
        """The next delay."""
        delay = min(self.cap, self.base * 2 ** min(self._n, 32))  # no float overflow
        self._n += 1
        return delay

    def reset(self) -> None:
        """Back to the first delay."""
        self._n = 0


class Reconnect:
    """When to try a connection (or channel) again: backoff, one log line, a timer.

    ``call_later`` is the loop's scheduler (pika's ``IOLoop.call_later`` or Twisted's
    ``reactor.callLater``); ``connect`` is what a retry runs unless told otherwise.
    """

    def __init__(
        self,
        name: str,
        call_later: CallLater,
        connect: Callable[[], None],
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._call_later = call_later
        self._connect = connect
        self.backoff = backoff or Backoff()

    def schedule(self, why: str, then: Callable[[], None] | None = None) -> float:
        """Log why, and run ``then`` (default: connect) after the next delay; the delay."""
        delay = self.backoff.next()
        log.warning("reconnecting", extra={"service": self.name, "why": why, "in_s": delay})
        self._call_later(delay, then or self._connect)
        return delay

    def succeeded(self) -> None:
        """Connected: the next failure starts from the first delay again."""
        self.backoff.reset()
