"""The demo's simulated fleet: steady devices, a few misbehaving ones, and a noisy tenant.

``fairway demo`` runs it as a child process (``fairway demo-fleet``) next to every
Fairway process, so the dashboard has something to show:

* **steady devices**: every device of every demo tenant reports one reading every
  ``period_s`` (a slow temperature wave with noise, humidity, a flag), so each shows
  online and its chart moves;
* **misbehaving devices**, each refused with its own reason code every
  ``misbehave_every_s``: a registered device whose clock is an hour fast
  (``clock_skew``), one that sends broken JSON (``malformed_json``), an id nobody
  registered
  (``unknown_device``: register it and replay its rejections from the Rejections page),
  and every ``over_rate_every_s`` one that bursts past its rate limit (``rate_limited``);
* **waves**: every ``wave_every_s`` the noisy tenant floods at ``flood_rate`` for
  ``wave_s`` seconds while a second tenant bursts at ``second_rate``, so both have a
  backlog at once and the Tenants page shows the weighted round robin serving them
  by weight while the quiet tenant's lag stays low. Waves come from devices of their
  own (``<tenant>-f0001`` ...), so the steady devices' pages stay quick to open.

Publishes without confirms (a show, not a measurement: the pipeline's guarantees are
tested elsewhere) over one blocking connection, paced in ticks of ``TICK_S``; SIGTERM
ends it after the current tick. Message ids are in the body (``id``), so a replayed
rejection keeps the id the device gave it.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import orjson
import pika

from fairway.amqp.connection import parameters
from fairway.kernel import topology
from fairway.kernel.settings import Settings

log = logging.getLogger(__name__)
TICK_S = 0.05
STREAM = "env"


@dataclass(frozen=True)
class Misbehaving:
    """The devices that misbehave, one per reason code."""

    bad_clock: str = "sim01-d0006"  # registered; its clock runs an hour fast
    malformed: str = "sim02-d0007"  # registered; sends truncated JSON
    over_rate: str = "sim02-d0006"  # registered; bursts past FAIRWAY_DEVICE_BURST
    unknown: str = "sim01-d0099"  # never registered by the demo

    def registered(self) -> dict[str, list[str]]:
        """The misbehaving devices the demo registers, by tenant (the unknown one is not)."""
        out: dict[str, list[str]] = {}
        for device in (self.bad_clock, self.malformed, self.over_rate):
            out.setdefault(device.partition("-")[0], []).append(device)
        return out


@dataclass(frozen=True)
class FleetPlan:
    """What the fleet publishes, and when."""

    steady: dict[str, list[str]]  # tenant -> devices reporting every period_s
    period_s: float = 2.0
    noisy: str = "sim01"
    flood_rate: float = 2500.0  # readings per second of the noisy tenant during a wave
    second: str = "sim02"
    # The second tenant's rate during a wave: both tenants must offer more than their
    # weighted share of what the scheduler writes for the shares to follow the weights.
    second_rate: float = 2000.0
    wave_s: float = 8.0
    wave_every_s: float = 120.0
    first_wave_s: float = 20.0
    misbehaving: Misbehaving = field(default_factory=Misbehaving)
    misbehave_every_s: float = 15.0
    # Well above FAIRWAY_DEVICE_BURST (2000): tokens refill (1000/s) while it publishes.
    over_rate_burst: int = 4000
    over_rate_every_s: float = 60.0
    flooders: int = 5  # devices of each wave tenant that carry its wave

    def flood_devices(self, tenant: str) -> list[str]:
        """The devices that carry a tenant's wave: ``<tenant>-f0001`` ... Not the steady
        devices, whose pages (a raw hour of readings) stay light to open."""
        return [f"{tenant}-f{j:04d}" for j in range(1, self.flooders + 1)]

    def registered(self) -> dict[str, list[str]]:
        """Every device the demo registers, by tenant (all but the unknown one)."""
        out = {t: list(ds) for t, ds in self.steady.items()}
        for tenant in (self.noisy, self.second):
            if tenant in out:
                out[tenant] += self.flood_devices(tenant)
        for tenant, devices in self.misbehaving.registered().items():
            out.setdefault(tenant, []).extend(devices)
        return out


def in_wave(plan: FleetPlan, elapsed: float) -> bool:
    """True while a wave runs, ``elapsed`` seconds after the fleet started (pure)."""
    if plan.wave_s <= 0 or plan.flood_rate <= 0 or elapsed < plan.first_wave_s:
        return False
    return (elapsed - plan.first_wave_s) % plan.wave_every_s < plan.wave_s


def reading(ts: float, msg_id: str, phase: float) -> bytes:
    """One plausible reading: a slow temperature wave with noise, humidity and a flag."""
    temp = 21 + 3 * math.sin(ts / 300 + phase) + random.uniform(-0.3, 0.3)
    return orjson.dumps(
        {
            "ts": ts,
            "id": msg_id,
            "values": {
                "temp": round(temp, 2),
                "humidity": round(45 + 10 * math.sin(ts / 900 + phase), 1),
                "ok": temp < 23.5,
            },
        }
    )


class Fleet:
    """Publish the plan until :meth:`stop` (or SIGTERM)."""

    def __init__(self, settings: Settings, plan: FleetPlan) -> None:
        self.settings, self.plan = settings, plan
        self.sent: dict[str, int] = {}
        self._stopping = False
        self._seq = 0
        self._run = f"{int(time.time()):x}"
        self._phase = {d: random.uniform(0, 6.3) for ds in plan.steady.values() for d in ds}
        self._channel: Any = None

    def stop(self) -> None:
        """End after the current tick (safe from a signal handler)."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the fleet cleanly."""

        def handler(_signum: int, _frame: FrameType | None) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, duration: float | None = None) -> dict[str, int]:
        """Publish until stopped (or for ``duration`` seconds); return counts by kind."""
        connection = pika.BlockingConnection(parameters(self.settings, "fairway-demo-fleet"))
        self._channel = connection.channel()
        started = last_report = time.monotonic()
        done = {"steady": 0.0, "flood": 0.0, "second": 0.0}
        next_misbehave = started + 5.0
        next_burst = started + 10.0
        try:
            while not self._stopping:
                now = time.monotonic()
                elapsed = now - started
                if duration is not None and elapsed >= duration:
                    break
                wall = time.time()
                steady_rate = sum(map(len, self.plan.steady.values())) / self.plan.period_s
                self._due("steady", done, steady_rate, elapsed, self._steady, wall)
                if in_wave(self.plan, elapsed):
                    self._due("flood", done, self.plan.flood_rate, elapsed, self._flood, wall)
                    self._due("second", done, self.plan.second_rate, elapsed, self._second, wall)
                else:
                    done["flood"] = self.plan.flood_rate * elapsed
                    done["second"] = self.plan.second_rate * elapsed
                if now >= next_misbehave:
                    next_misbehave = now + self.plan.misbehave_every_s
                    self._misbehave(wall)
                if now >= next_burst:
                    next_burst = now + self.plan.over_rate_every_s
                    self._burst(wall)
                if now - last_report >= 30:
                    last_report = now
                    log.info("fleet", extra={"sent": dict(self.sent)})
                connection.process_data_events(time_limit=TICK_S)
        finally:
            if connection.is_open:
                connection.close()
        return dict(self.sent)

    def _due(
        self,
        kind: str,
        done: dict[str, float],
        rate: float,
        elapsed: float,
        publish: Any,
        wall: float,
    ) -> None:
        target = rate * elapsed
        count = int(target - done[kind])
        if count <= 0:
            return
        done[kind] += count
        for _ in range(count):
            publish(wall)

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self._run}-{self._seq}"

    def _publish(self, kind: str, device: str, body: bytes) -> None:
        self._channel.basic_publish(
            topology.TELEMETRY,
            f"{device}.{STREAM}",
            body,
            pika.BasicProperties(delivery_mode=2, content_type="application/json"),
        )
        self.sent[kind] = self.sent.get(kind, 0) + 1

    # -- the kinds of traffic -----------------------------------------------------------
    _cursor = 0

    def _steady(self, wall: float) -> None:
        devices = [d for ds in self.plan.steady.values() for d in ds]
        device = devices[self._cursor % len(devices)]
        self._cursor += 1
        self._publish("steady", device, reading(wall, self._next_id(), self._phase[device]))

    def _flood_of(self, tenant: str, kind: str, wall: float) -> None:
        devices = self.plan.flood_devices(tenant)
        if devices:
            device = random.choice(devices)
            self._publish(kind, device, reading(wall, self._next_id(), 0.0))

    def _flood(self, wall: float) -> None:
        self._flood_of(self.plan.noisy, "flood", wall)

    def _second(self, wall: float) -> None:
        self._flood_of(self.plan.second, "second", wall)

    def _misbehave(self, wall: float) -> None:
        bad = self.plan.misbehaving
        self._publish("bad_clock", bad.bad_clock, reading(wall + 3600, self._next_id(), 0.0))
        self._publish("malformed", bad.malformed, b'{"ts": ' + str(wall).encode() + b', "val')
        self._publish("unknown", bad.unknown, reading(wall, self._next_id(), 0.0))

    def _burst(self, wall: float) -> None:
        device = self.plan.misbehaving.over_rate
        for _ in range(self.plan.over_rate_burst):
            self._publish("over_rate", device, reading(wall, self._next_id(), 0.0))


def run(settings: Settings, plan: FleetPlan) -> None:
    """``fairway demo-fleet``: publish until SIGTERM."""
    fleet = Fleet(settings, plan)
    fleet.install_signal_handlers()
    log.info("fleet started", extra={"plan": repr(plan)})
    sent = fleet.run()
    log.info("fleet stopped", extra={"sent": sent})
