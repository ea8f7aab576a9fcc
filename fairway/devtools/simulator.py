"""Simulated devices: publish readings to ``telemetry`` with streamed confirms.

``fairway simulate --tenants N --devices M --rate R [--batch B] [--noisy TENANT:FACTOR]
[--duration S]`` publishes about ``R`` readings per second in total, spread over
``N x M`` devices; a noisy tenant's devices publish ``FACTOR`` times as often. With
``--batch B`` (> 1) each message is a device batch of ``B`` readings (a JSON array,
readings 1 ms apart, without their own ids: each gets ``<message_id>#<index>``), so
``R / B`` messages per second. The number of unconfirmed publishes is bounded by
``window``; progress goes to stderr once a second and a JSON summary (messages sent,
confirmed, nacked, resent, reconnects; readings confirmed) is returned at the end. On
a lost connection it fails over to the next broker address and publishes again what
was not confirmed.
"""

from __future__ import annotations

import itertools
import logging
import random
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import pika
from pika.adapters.select_connection import IOLoop
from pika.spec import Basic, BasicProperties

from fairway.amqp.backoff import Reconnect
from fairway.amqp.connection import Brokers
from fairway.kernel import topology
from fairway.kernel.settings import Settings

log = logging.getLogger(__name__)
TICK_S = 0.01
RETRY_NACKED_S = 0.5  # a nacked message is published again this long after the nack
Message = tuple[str, bytes, str]  # routing key, body, message id


@dataclass
class Summary:
    """What the simulator did."""

    sent: int = 0  # distinct messages
    confirmed: int = 0
    nacked: int = 0  # refused by the broker and given up (not counted in ``sent`` again)
    retried: int = 0  # nacks answered by publishing the message again (``retry_nacked``)
    seconds: float = 0.0
    batch: int = 1  # readings per message
    resent: int = 0  # publishes repeated (after a lost connection, or a retried nack)
    reconnects: int = 0

    @property
    def rate(self) -> float:
        """Confirmed messages per second."""
        return self.confirmed / self.seconds if self.seconds else 0.0

    @property
    def readings(self) -> int:
        """Readings in the confirmed messages."""
        return self.confirmed * self.batch


def tenant_ids(count: int) -> list[str]:
    """Simulated tenant ids: ``sim01``, ``sim02``, ..."""
    return [f"sim{i:02d}" for i in range(1, count + 1)]


def device_ids(tenant: str, count: int) -> list[str]:
    """Simulated device ids of one tenant: ``sim01-d0001``, ..."""
    return [f"{tenant}-d{j:04d}" for j in range(1, count + 1)]


def weighted_devices(
    devices_by_tenant: dict[str, list[str]], noisy: dict[str, float]
) -> Iterator[str]:
    """Endless device sequence in which a noisy tenant's devices appear FACTOR x as often."""
    pool: list[str] = []
    for tenant, devices in devices_by_tenant.items():
        pool.extend(devices * max(1, round(noisy.get(tenant, 1.0))))
    random.Random(7).shuffle(pool)
    return itertools.cycle(pool)


def reading(now: float, seq: int) -> bytes:
    """One plausible reading body."""
    return orjson.dumps(
        {
            "ts": now,
            "id": f"m{seq}",
            "values": {"temp": round(20 + 5 * random.random(), 2), "ok": True},
        }
    )


def batch_body(now: float, size: int) -> bytes:
    """A device batch of ``size`` plausible readings, 1 ms apart, ending at ``now``."""
    return orjson.dumps(
        [
            {
                "ts": now - (size - 1 - i) / 1000,
                "values": {"temp": round(20 + 5 * random.random(), 2), "ok": True},
            }
            for i in range(size)
        ]
    )


class Simulator:
    """Publish at a target rate over one connection, confirms streamed.

    A device that loses its broker connection does what a real one should: it connects
    to the next broker address (``FAIRWAY_AMQP_URL`` may list a cluster's nodes) with
    the shared backoff, and publishes again every message not confirmed yet, with the
    same message id, before any new one (the scheduler stores a repeated id once). A
    message counts as confirmed once a broker confirmed it, whichever publish that was.

    A ``basic.nack`` means the broker did not take the message. By default the simulator
    counts it and moves on (how the tests see a full queue refuse readings). With
    ``retry_nacked`` it publishes the message again ``RETRY_NACKED_S`` later, as a device
    should when the refusal may be passing: RabbitMQ 3.10 also nacks a channel's first
    publish to a quorum queue whose leader's node it cannot reach (a node lost or
    partitioned, before the election moved the leader).
    """

    def __init__(
        self,
        settings: Settings,
        devices: Iterator[str],
        *,
        rate: float,
        duration: float | None = None,
        total: int | None = None,
        window: int = 5000,
        stream: str = "env",
        progress: bool = True,
        batch: int = 1,
        max_outage_s: float = 120.0,
        retry_nacked: bool = False,
    ) -> None:
        """``rate``: readings per second; ``total``: readings (rounded up to whole
        batches); ``window``: unconfirmed messages; ``batch``: readings per message
        (1: a single reading object, as devices without batches send); ``max_outage_s``:
        how long to keep trying without a connection before giving up; ``retry_nacked``:
        publish a nacked message again instead of giving it up."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.settings, self.devices = settings, devices
        self.batch = batch
        self.rate = rate / batch  # messages per second
        self.duration = duration
        self.total = None if total is None else -(-total // batch)  # messages
        self.window, self.stream, self.progress = window, stream, progress
        self.max_outage_s = max_outage_s
        self.retry_nacked = retry_nacked
        self.summary = Summary(batch=batch)
        self.ioloop = IOLoop()
        self.brokers = Brokers(settings, "fairway-simulator")
        self._reconnect = Reconnect("fairway-simulator", self.ioloop.call_later, self._connect)
        self._channel: Any = None
        self._connection: Any = None
        self._started = 0.0
        self._last_report = 0.0
        self._done_publishing = False
        self._closing = False
        self._down_since: float | None = None  # when the connection was lost
        self.run_id = f"{int(time.time() * 1000):x}"
        # Unconfirmed publishes of the current channel by delivery tag, in publish order,
        # and those of lost channels, to publish again: at most ``window`` together.
        self._pending: OrderedDict[int, Message] = OrderedDict()
        self._resend: deque[Message] = deque()
        self._nacked: deque[tuple[float, Message]] = deque()  # (when due, message) to retry
        self._tag = 0  # the current channel's last delivery tag

    def finish(self) -> None:
        """Publish nothing new; :meth:`run` returns once the rest is confirmed (any thread)."""

        def finish_in_loop() -> None:
            self.total = self.summary.sent

        self.ioloop.add_callback_threadsafe(finish_in_loop)

    @property
    def connected(self) -> bool:
        """True while a confirming channel is open (False between a loss and the next)."""
        return self._channel is not None

    def run(self) -> Summary:
        """Publish until duration or total is reached and every publish is confirmed."""
        self._connect()
        self.ioloop.start()
        self.summary.seconds = time.monotonic() - self._started if self._started else 0.0
        return self.summary

    # -- the connection ------------------------------------------------------------
    def _connect(self) -> None:
        self._connection = pika.SelectConnection(
            self.brokers.parameters(),
            on_open_callback=lambda c: c.channel(on_open_callback=self._on_channel),
            on_open_error_callback=lambda _c, exc: self._lost(f"connect failed: {exc!r}"),
            on_close_callback=lambda _c, why: self._on_closed(why),
            custom_ioloop=self.ioloop,
        )

    def _on_closed(self, why: Exception) -> None:
        if self._closing:
            self.ioloop.stop()
        else:
            self._lost(f"connection closed: {why!r}")

    def _lost(self, why: str) -> None:
        """No channel: what it left unconfirmed is published again on the next one."""
        self._channel = None
        self._resend.extendleft(reversed(self._pending.values()))
        self._pending.clear()
        self.brokers.lost()
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        # Never connected, every address tried: a wrong URL, not an outage.
        never_connected = (
            not self._started and self.summary.reconnects >= len(self.brokers.urls) - 1
        )
        if never_connected or now - self._down_since > self.max_outage_s:
            log.error("cannot connect", extra={"error": why})
            self.ioloop.stop()
            return
        self.summary.reconnects += 1
        self._reconnect.schedule(f"{why} (next: {self.brokers.address})")

    def _on_channel(self, channel: Any) -> None:
        def confirming(_frame: Any) -> None:
            self._channel, self._tag, self._down_since = channel, 0, None
            self._reconnect.succeeded()
            self.brokers.opened()
            if not self._started:
                self._start()

        channel.confirm_delivery(self._on_confirm, callback=confirming)

    def _start(self) -> None:
        self._started = self._last_report = time.monotonic()
        self._tick()

    # -- publishing ----------------------------------------------------------------
    def _due(self, now: float) -> int:
        due = int((now - self._started) * self.rate) - self.summary.sent
        if self.total is not None:
            due = min(due, self.total - self.summary.sent)
        return max(0, min(due, self.window - self._unconfirmed))

    @property
    def _unconfirmed(self) -> int:
        s = self.summary
        return s.sent - s.confirmed - s.nacked

    def _publish(self, message: Message) -> None:
        routing_key, body, message_id = message
        props = BasicProperties(
            delivery_mode=2, content_type="application/json", message_id=message_id
        )
        self._channel.basic_publish(topology.TELEMETRY, routing_key, body, props)
        self._tag += 1
        self._pending[self._tag] = message

    def _tick(self) -> None:
        now = time.monotonic()
        elapsed = now - self._started
        finished = (self.duration is not None and elapsed >= self.duration) or (
            self.total is not None and self.summary.sent >= self.total
        )
        while self._nacked and self._nacked[0][0] <= now:
            self._resend.append(self._nacked.popleft()[1])
        if self._channel is not None:
            while self._resend:
                self._publish(self._resend.popleft())
                self.summary.resent += 1
        if finished:
            self._done_publishing = True
        elif self._channel is not None:
            wall = time.time()
            for _ in range(self._due(now)):
                self.summary.sent += 1
                if self.batch == 1:
                    body = reading(wall, self.summary.sent)
                else:
                    body = batch_body(wall, self.batch)
                device = next(self.devices)
                # The body is kept: one published again carries the same readings.
                self._publish(
                    (f"{device}.{self.stream}", body, f"{self.run_id}-{self.summary.sent}")
                )
        if self.progress and now - self._last_report >= 1.0:
            self._last_report = now
            self._report(elapsed)
        if self._done_publishing and self._unconfirmed == 0 and self._channel is not None:
            self._closing = True
            self._connection.close()
            return
        self.ioloop.call_later(TICK_S, self._tick)

    def _report(self, elapsed: float) -> None:
        s = self.summary
        print(
            f"[{elapsed:6.1f}s] sent {s.sent} confirmed {s.confirmed} nacked {s.nacked}"
            f" resent {s.resent} ({s.confirmed / max(elapsed, 1e-9):.0f} msg/s,"
            f" {s.readings / max(elapsed, 1e-9):.0f} readings/s)",
            file=sys.stderr,
            flush=True,
        )

    def _on_confirm(self, frame: Any) -> None:
        """Settle the publishes a broker confirm covers (``multiple``: every earlier tag)."""
        method = frame.method
        tag = method.delivery_tag
        count = 0
        settled: list[Message] = []
        if method.multiple:
            while self._pending and next(iter(self._pending)) <= tag:
                settled.append(self._pending.popitem(last=False)[1])
                count += 1
        elif (message := self._pending.pop(tag, None)) is not None:
            settled.append(message)
            count = 1
        if isinstance(method, Basic.Ack):
            self.summary.confirmed += count
        elif self.retry_nacked:
            self.summary.retried += count
            due = time.monotonic() + RETRY_NACKED_S
            self._nacked.extend((due, message) for message in settled)
        else:
            self.summary.nacked += count


def summary_json(summary: Summary) -> str:
    """The summary as one JSON line."""
    return orjson.dumps(
        {**asdict(summary), "readings": summary.readings, "rate": round(summary.rate, 1)}
    ).decode()
