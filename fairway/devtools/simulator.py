"""Simulated devices: publish readings to ``telemetry`` with streamed confirms.

``fairway simulate --tenants N --devices M --rate R [--batch B] [--noisy TENANT:FACTOR]
[--duration S]`` publishes about ``R`` readings per second in total, spread over
``N x M`` devices; a noisy tenant's devices publish ``FACTOR`` times as often. With
``--batch B`` (> 1) each message is a device batch of ``B`` readings (a JSON array,
readings 1 ms apart, without their own ids: each gets ``<message_id>#<index>``), so
``R / B`` messages per second. The number of unconfirmed publishes is bounded by
``window``; progress goes to stderr once a second and a JSON summary (messages sent,
confirmed, nacked; readings confirmed) is returned at the end.
"""

from __future__ import annotations

import itertools
import logging
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import pika
from pika.adapters.select_connection import IOLoop
from pika.spec import Basic, BasicProperties

from fairway.amqp.connection import parameters
from fairway.kernel import topology
from fairway.kernel.settings import Settings

log = logging.getLogger(__name__)
TICK_S = 0.01


@dataclass
class Summary:
    """What the simulator did."""

    sent: int = 0  # messages
    confirmed: int = 0
    nacked: int = 0
    seconds: float = 0.0
    batch: int = 1  # readings per message

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
    """Publish at a target rate over one connection, confirms streamed."""

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
    ) -> None:
        """``rate``: readings per second; ``total``: readings (rounded up to whole
        batches); ``window``: unconfirmed messages; ``batch``: readings per message
        (1: a single reading object, as devices without batches send)."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.settings, self.devices = settings, devices
        self.batch = batch
        self.rate = rate / batch  # messages per second
        self.duration = duration
        self.total = None if total is None else -(-total // batch)  # messages
        self.window, self.stream, self.progress = window, stream, progress
        self.summary = Summary(batch=batch)
        self.ioloop = IOLoop()
        self._channel: Any = None
        self._connection: Any = None
        self._started = 0.0
        self._last_report = 0.0
        self._done_publishing = False
        self.run_id = f"{int(time.time() * 1000):x}"
        self._watermark = 0  # every publish up to here is confirmed
        self._singles: set[int] = set()  # confirmed one by one above the watermark

    def run(self) -> Summary:
        """Publish until duration or total is reached and every publish is confirmed."""
        self._connection = pika.SelectConnection(
            parameters(self.settings, "fairway-simulator"),
            on_open_callback=lambda c: c.channel(on_open_callback=self._on_channel),
            on_open_error_callback=lambda _c, exc: self._fail(exc),
            on_close_callback=lambda _c, _r: self.ioloop.stop(),
            custom_ioloop=self.ioloop,
        )
        self.ioloop.start()
        self.summary.seconds = time.monotonic() - self._started if self._started else 0.0
        return self.summary

    def _fail(self, exc: Exception) -> None:
        log.error("cannot connect", extra={"error": repr(exc)})
        self.ioloop.stop()

    def _on_channel(self, channel: Any) -> None:
        self._channel = channel
        channel.confirm_delivery(self._on_confirm, callback=lambda _f: self._start())

    def _start(self) -> None:
        self._started = self._last_report = time.monotonic()
        self._tick()

    def _due(self, now: float) -> int:
        due = int((now - self._started) * self.rate) - self.summary.sent
        if self.total is not None:
            due = min(due, self.total - self.summary.sent)
        return max(0, min(due, self.window - self._unconfirmed))

    @property
    def _unconfirmed(self) -> int:
        s = self.summary
        return s.sent - s.confirmed - s.nacked

    def _tick(self) -> None:
        now = time.monotonic()
        elapsed = now - self._started
        finished = (self.duration is not None and elapsed >= self.duration) or (
            self.total is not None and self.summary.sent >= self.total
        )
        if not finished:
            wall = time.time()
            props = BasicProperties(delivery_mode=2, content_type="application/json")
            for _ in range(self._due(now)):
                self.summary.sent += 1
                if self.batch == 1:
                    body = reading(wall, self.summary.sent)
                else:
                    body = batch_body(wall, self.batch)
                device = next(self.devices)
                props.message_id = f"{self.run_id}-{self.summary.sent}"
                self._channel.basic_publish(
                    topology.TELEMETRY, f"{device}.{self.stream}", body, props
                )
        else:
            self._done_publishing = True
        if self.progress and now - self._last_report >= 1.0:
            self._last_report = now
            self._report(elapsed)
        if self._done_publishing and self._unconfirmed == 0:
            self._connection.close()
            return
        self.ioloop.call_later(TICK_S, self._tick)

    def _report(self, elapsed: float) -> None:
        s = self.summary
        print(
            f"[{elapsed:6.1f}s] sent {s.sent} confirmed {s.confirmed} nacked {s.nacked}"
            f" ({s.confirmed / max(elapsed, 1e-9):.0f} msg/s,"
            f" {s.readings / max(elapsed, 1e-9):.0f} readings/s)",
            file=sys.stderr,
            flush=True,
        )

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        if method.multiple and tag <= self._watermark:
            count = 0  # stale: already counted
        elif method.multiple:
            # every publish in (watermark, tag] not already confirmed singly
            singles = {t for t in self._singles if t <= tag}
            count = tag - self._watermark - len(singles)
            self._singles -= singles
            self._watermark = max(self._watermark, tag)
        elif tag > self._watermark and tag not in self._singles:
            self._singles.add(tag)
            count = 1
        else:
            count = 0
        if isinstance(method, Basic.Ack):
            self.summary.confirmed += count
        else:
            self.summary.nacked += count


def summary_json(summary: Summary) -> str:
    """The summary as one JSON line."""
    return orjson.dumps(
        {**asdict(summary), "readings": summary.readings, "rate": round(summary.rate, 1)}
    ).decode()
