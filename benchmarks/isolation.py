"""Isolation: a quiet tenant's experience while a hostile party attacks a shared resource.

One run, one fresh vhost and database, one relay and one scheduler. A quiet device of
tenant ``quiet`` publishes readings through the whole path (``telemetry`` -> ``ingest``
-> relay -> ``tenant.quiet`` -> scheduler -> MongoDB) at ``--quiet-rate`` per second,
each publish waiting for its confirm, like a device. Its publish-to-stored latency is
measured first unloaded, then during each attack in turn, each attack run by a separate
process (its own interpreter and connection, as a real attacker would be):

* ``junk_flood``: one device floods maximum-size junk (over the contract's 64 KiB,
  under the broker's 128 KiB), refused as ``too_large``;
* ``refusable_flood``: one device floods small malformed messages (``malformed_json``);
* ``over_rate``: one device sends valid readings far above its device rate
  (``rate_limited``);
* ``backlog_flood``: eighty devices of tenant ``hostile`` (``--flood-devices``) send valid
  readings in device batches of 50, each at its device rate, into a small tenant backlog
  (``tenant_backlog_full`` once the scheduler falls behind; ``hostile_backlog`` reports
  the tenant queue's peak against its bounds). With ``--hostile-rate`` the tenant has a
  plan (``max_rate``) below that offer, so its excess is refused ``tenant_rate_limited``
  in the relay (``refused_by_reason`` has both; ``hostile_accepted_readings`` what the
  relay accepted for it);
* ``login_flood``: a stranger tries AMQP logins with wrong passwords for existing device
  ids from four threads (each asks ``fairway web``'s broker auth endpoints through
  RabbitMQ); the quiet figure here is also the latency and success of quiet devices'
  own first logins (``quiet_login``), each a new device so no cache answers it;
* ``job_flood``, ``web_login_flood``, ``session_flood``, ``push_token_flood``: floods of
  the web app, the job queue and the push gateway (:mod:`benchmarks.isolation_web` has
  them and the quiet side they are measured by: the quiet admin's page and API p99, its
  report jobs' submit-to-finished p99 and its live events' publish-to-event p99). Their
  ``quiet_p99_ratio`` is the page/API one; ``quiet_job_p99_ratio``,
  ``quiet_event_p99_ratio`` and ``quiet_stored_p99_ratio`` (the readings, published
  meanwhile) are targets as well; the attacker's refusals are the web app's and the
  gateway's own counts (``fairway_web_refused_total``, ``fairway_gateway_refused_total``)
  for the attack's reasons, checked against what the attacker was answered.

The web app runs on a free port, except with ``login_flood`` or a device attack as the
hostile devices (RabbitMQ asks the broker-auth port 8082 of the web app on port 8080
about device logins): then the run holds ``/tmp/fairway-web-8080.lock`` (``flock``), the
lock the test suites take for that port. With ``--private-broker`` the run starts a
RabbitMQ node of its own (:func:`common.use_private_broker`, the shared configuration)
whose auth backend asks the run's web app's broker-auth port, a free one: no lock, and
the broker's CPU is the run's alone. The web attacks also start a push gateway and
one Celery worker of their own (``--job-workers`` pool processes, default 2 as compose
runs, declared to the run's processes as ``FAIRWAY_JOBS_CPU_PROCESSES``).

Stored is observed by polling the scheduler's per-tenant stored counter (never the
database: a count on FerretDB is a scan): the quiet device's readings are stored in the
order they were published, so when the counter reaches k its k-th reading is stored.

Per attack: ``quiet_p99_ratio`` (quiet p99 under attack / unloaded), ``quiet_errors``
(quiet publishes nacked or failed, plus quiet readings not stored by the end),
``attacker_sent`` and ``attacker_refused`` (the relay's refusals for the attack's reason,
kept in ``rejected`` or counted over budget). Targets: each ratio <= 2, zero quiet
errors, every refused attacker message counted. Web attacks (and the unloaded web
phase) also report ``cpu_seconds`` per process over the phase, from ``/proc``: web,
gateway, Celery worker (with its pool), broker node, database (FerretDB and its
PostgreSQL backends, shared with other users of the server) and the attacker. Device
attacks and the unloaded phase report it too (relay, scheduler, web, broker, database,
this benchmark's own process; the attacker, a child gone by the end, by its rusage), and
``cpu_us_per_attacker_message``: each figure over the attacker's messages (logins for
``login_flood``), the process an attack costs most. ``broker_user_answers`` counts the
web app's answers to every broker auth check during a device attack.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import resource
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pika

from benchmarks import common
from benchmarks import isolation_web as webside
from benchmarks.common import percentile, r, say
from fairway.amqp.connection import parameters
from fairway.devtools import celery_workers
from fairway.devtools.attacks import LOGIN_REFUSED, with_user
from fairway.devtools.processes import free_port
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage import accounts, registry
from tests.harness import FairwayProcess, Pipeline

NAME = "isolation"
QUIET_TENANT, QUIET_DEVICE = "quiet", "quiet-1"
HOSTILE_TENANT = "hostile"
HOSTILE_DEVICES = [f"hostile-{i}" for i in range(10)]
STORED = "fairway_scheduler_stored_total"
REFUSED = "fairway_relay_rejected_total"
OVER_BUDGET = "fairway_relay_rejected_over_budget_total"
UNREAD = "fairway_relay_refused_unread_total"
QUARANTINED = "fairway_devices_quarantined_total"
DEVICE_RATE = 200.0  # per device: the over-rate attack sends far more
HOSTILE_BACKLOG = 2_000  # messages in tenant.hostile
LOGINS = 20  # quiet devices' first logins per phase
WEB_8080_LOCK = "/tmp/fairway-web-8080.lock"  # held by every suite that binds port 8080
HOSTILE_READINGS = 30_000  # a day of one hostile device: what its report jobs read
QUIET_READINGS = 360  # an hour of the quiet device: what the quiet report reads


@dataclass(frozen=True)
class Attack:
    """One attack: what the attacker publishes, and the reason it must be refused with."""

    reason: str
    body: Callable[[int], bytes]
    devices: tuple[str, ...]
    rate: float  # messages per second the attacker offers (0: as fast as it can)
    readings: int = 1  # readings per message (a device batch when more)
    also: tuple[str, ...] = ()  # other reasons its excess may be refused with


def _reading(n: int) -> bytes:
    return orjson.dumps({"ts": time.time(), "values": {"temp": 21.5}, "id": f"h{n}"})


FLOOD_BATCH = 50  # readings per backlog_flood message (a device batch)


def _batch(n: int) -> bytes:
    now = time.time()
    return orjson.dumps(
        [{"ts": now, "values": {"temp": 21.5}, "id": f"h{n}-{i}"} for i in range(FLOOD_BATCH)]
    )


# Each one-device attack has a device of its own: a device quarantined by one phase
# would otherwise be shut out of the next.
ATTACKS: dict[str, Attack] = {
    "junk_flood": Attack("too_large", lambda n: b"x" * 120_000, ("hostile-junk",), 0),
    "refusable_flood": Attack("malformed_json", lambda n: b"{not json", ("hostile-refuse",), 0),
    "over_rate": Attack("rate_limited", _reading, ("hostile-rate",), 20 * DEVICE_RATE),
    # Every device at its rate: valid readings only (faster, most of the flood would be
    # refused as rate_limited, and paced: a rate flood, not a backlog), in device batches
    # of FLOOD_BATCH: one reading a message, the relay's per-message work capped the
    # tenant below what the scheduler stores, so the flood waited in ingest.hostile and
    # the tenant backlog never filled (nothing refused). Set by flood_devices() below:
    # eighty devices offer 16,000 readings/s, twice what one scheduler stores here (forty
    # offered 8,000, about what it stores once harness devices log in without argon2,
    # and some runs refused nothing).
    # With --hostile-rate the tenant has a plan (max_rate) below the flood's offer: its
    # excess is refused tenant_rate_limited in the relay before it reaches the backlog.
    "backlog_flood": Attack(
        "tenant_backlog_full", _batch, (), 0.0, FLOOD_BATCH, also=("tenant_rate_limited",)
    ),
}
# Every reason a device attack's refusals are reported by (``refused_by_reason``).
DEVICE_REASONS = (
    "too_large",
    "malformed_json",
    "rate_limited",
    "tenant_rate_limited",
    "tenant_backlog_full",
)


def flood_devices(n: int) -> None:
    """``backlog_flood`` with ``n`` devices, each at the device rate (in readings)."""
    attack = ATTACKS["backlog_flood"]
    devices = tuple(f"hostile-{i}" for i in range(n))
    ATTACKS["backlog_flood"] = replace(
        attack, devices=devices, rate=n * DEVICE_RATE / attack.readings
    )


FLOOD_DEVICES = 80
flood_devices(FLOOD_DEVICES)


# counts: messages sent, connections lost (closed by the broker, also while opening),
# logins refused, logins admitted, ms from the start to the first refused login (0: none),
# ms to the last admitted login.
COUNTS = (
    "sent",
    "disconnected",
    "logins_refused",
    "logins_admitted",
    "first_refused_ms",
    "last_admitted_ms",
)
BROKER_USER = "fairway_broker_auth_decisions_total"  # the web app's answers to /broker/user
LOGIN_REFUSED_METRIC = "fairway_broker_auth_refused_total"


def attacker(
    amqp_url: str,
    attack_name: str,
    seconds: float,
    counts: Any,
    passwords: dict[str, str] | None = None,
) -> None:
    """Publish the attack's messages for ``seconds`` (a child process; no confirms).

    With ``passwords`` each device publishes as itself (one connection per device, as a
    device would; the broker asks ``fairway web``'s broker-auth port about each login), and a
    connection the broker closes (or refuses) is opened again every 0.5 s until the
    phase ends, as a determined attacker would. ``counts``: :data:`COUNTS`.

    A connection closed between its login and its channel's opening (the relay's
    quarantine sweep does that) is a lost connection like any other, not the attacker's
    end: before, that escaped and ended the process, and the phase went on without it.
    """
    attack = ATTACKS[attack_name]
    props = pika.BasicProperties(content_type="application/json")
    start = time.monotonic()
    open_: dict[str, Any] = {}  # device -> (connection, channel impl)
    retry_at: dict[str, float] = {}

    def since_start_ms() -> int:
        return max(1, int((time.monotonic() - start) * 1000))

    def connect(device: str) -> Any:
        if device in open_:
            return open_[device]
        if time.monotonic() < retry_at.get(device, 0.0):
            return None
        url = amqp_url if passwords is None else with_user(amqp_url, device, passwords[device])
        try:
            connection = pika.BlockingConnection(
                parameters(Settings(amqp_url=url), "isolation-attacker")
            )
        except LOGIN_REFUSED:
            counts[2] += 1
            counts[4] = counts[4] or since_start_ms()
            retry_at[device] = time.monotonic() + 0.5
            return None
        except pika.exceptions.AMQPError:
            lost(device)
            return None
        counts[3] += 1
        counts[5] = since_start_ms()
        try:
            # Unflushed publishes through the channel's implementation: as fast as the
            # socket takes them.
            open_[device] = (connection, connection.channel()._impl)
        except pika.exceptions.AMQPError:
            with suppress(pika.exceptions.AMQPError):
                connection.close()
            lost(device)
            return None
        return open_[device]

    def lost(device: str) -> None:
        counts[1] += 1
        open_.pop(device, None)
        retry_at[device] = time.monotonic() + 0.5

    n = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * attack.rate) if attack.rate else n + 50
        while n < due:
            device = attack.devices[n % len(attack.devices)]
            conn = connect(device)
            if conn is None:
                if all(d not in open_ for d in attack.devices):
                    time.sleep(0.05)
                    break
                n += 1  # its turn passes
                continue
            try:
                conn[1].basic_publish(topology.TELEMETRY, f"{device}.env", attack.body(n), props)
            except pika.exceptions.AMQPError:
                lost(device)
                continue
            n += 1
            counts[0] += 1
        for device, (connection, _impl) in list(open_.items()):
            try:
                connection.process_data_events(0)
            except pika.exceptions.AMQPError:
                lost(device)
        if attack.rate:
            time.sleep(0.002)
    for connection, _impl in open_.values():
        with suppress(pika.exceptions.AMQPError):
            connection.process_data_events(0)
            connection.close()


def login_attacker(amqp_url: str, seconds: float, sent: Any, threads: int = 4) -> None:
    """Wrong-password logins as the hostile devices for ``seconds`` (a child process)."""
    counts = [0] * threads

    def hammer(slot: int) -> None:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            n = counts[slot] = counts[slot] + 1
            device = HOSTILE_DEVICES[n % len(HOSTILE_DEVICES)]
            url = with_user(amqp_url, device, f"wrong-{slot}-{n}")
            with suppress(pika.exceptions.AMQPError):  # refused, as it must be
                pika.BlockingConnection(parameters(Settings(amqp_url=url), "attacker")).close()

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    sent.value = sum(counts)


def quiet_logins(env: Pipeline, devices: list[dict[str, str]], seconds: float) -> dict[str, Any]:
    """Each quiet device logs in once (spread over ``seconds``): latency and failures."""
    latencies: list[float] = []
    failures = 0
    start = time.monotonic()
    for i, creds in enumerate(devices):
        time.sleep(max(0.0, start + i * seconds / len(devices) - time.monotonic()))
        began = time.perf_counter()
        try:
            with env.channel(creds["username"], creds["password"]):
                pass
            latencies.append(time.perf_counter() - began)
        except pika.exceptions.AMQPError:
            failures += 1
    ms = [x * 1000 for x in latencies]
    return {
        "logins": len(devices),
        "p50_ms": r(percentile(ms, 50)),
        "p99_ms": r(percentile(ms, 99)),
        "failures": failures,
    }


def quiet_phase(
    env: Pipeline, scheduler: FairwayProcess, seconds: float, rate: float, tag: str
) -> dict[str, Any]:
    """The quiet device publishes for ``seconds``; its publish-to-stored latencies."""
    published: list[float] = []
    errors: list[str] = []
    base = scheduler.metric(STORED, tenant=QUIET_TENANT)

    def publish() -> None:
        try:
            with env.channel() as ch:
                ch.confirm_delivery()
                start = time.monotonic()
                while (elapsed := time.monotonic() - start) < seconds:
                    while len(published) < int(elapsed * rate) + 1:
                        body = orjson.dumps({"ts": time.time(), "values": {"temp": 20.0}})
                        wall = time.time()
                        try:
                            ch.basic_publish(
                                topology.TELEMETRY,
                                f"{QUIET_DEVICE}.env",
                                body,
                                pika.BasicProperties(message_id=f"{tag}{len(published)}"),
                            )
                        except pika.exceptions.NackError:
                            errors.append("nacked")
                        published.append(wall)
                    time.sleep(0.002)
        except Exception as exc:  # reported in the result, never silently
            errors.append(repr(exc))

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds + 60
    while time.monotonic() < deadline:
        stored = int(scheduler.metric(STORED, tenant=QUIET_TENANT) - base)
        now = time.time()
        while len(latencies) < min(stored, len(published)):
            latencies.append(now - published[len(latencies)])
        if not thread.is_alive() and len(latencies) >= len(published):
            break
        time.sleep(0.01)
    thread.join(5)
    ms = [x * 1000 for x in latencies]
    return {
        "sent": len(published),
        "stored": len(latencies),
        "p50_ms": r(percentile(ms, 50)),
        "p99_ms": r(percentile(ms, 99)),
        "errors": len(errors) + len(published) - len(latencies),
        "error_kinds": sorted(set(errors)),
    }


def refused(relay: FairwayProcess, *reasons: str) -> float:
    """The relay's refusals with ``reasons``: kept in ``rejected`` and over budget."""
    return sum(by_reason(relay, reasons).values())


def by_reason(relay: FairwayProcess, reasons: tuple[str, ...]) -> dict[str, float]:
    """The relay's refusals for each of ``reasons``, kept and over budget."""
    samples = relay.metrics(REFUSED, OVER_BUDGET)
    out = {}
    for reason in reasons:
        kept = samples.get(REFUSED, {}).get(f'reason="{reason}"', 0.0)
        over = sum(
            value
            for labels, value in samples.get(OVER_BUDGET, {}).items()
            if f'reason="{reason}"' in labels
        )
        out[reason] = kept + over
    return out


def broker_logins(web: FairwayProcess | None) -> dict[str, float]:
    """The web app's answers to RabbitMQ's ``/broker/user`` calls so far, and how many of
    its refusals were ``device_quarantined``: whether the broker asked at all (its auth
    cache answers repeated logins for its TTL without asking)."""
    if web is None:
        return {}
    checks = {
        f"{check}_{decision}": web.metric(BROKER_USER, check=check, decision=decision)
        for check in ("vhost", "resource", "topic")
        for decision in ("allow", "deny")
    }
    return {
        "allow": web.metric(BROKER_USER, check="user", decision="allow"),
        "deny": web.metric(BROKER_USER, check="user", decision="deny"),
        **checks,
        "quarantined": sum(
            value
            for labels, value in web.metrics(LOGIN_REFUSED_METRIC)
            .get(LOGIN_REFUSED_METRIC, {})
            .items()
            if 'reason="device_quarantined"' in labels
        ),
    }


def run_attack(
    env: Pipeline,
    relay: FairwayProcess,
    scheduler: FairwayProcess,
    name: str,
    seconds: float,
    quiet_rate: float,
    passwords: dict[str, str] | None = None,
    web: FairwayProcess | None = None,
) -> dict[str, Any]:
    """Run one attack in a child process while the quiet device publishes (as the
    hostile devices, with ``passwords``; else as ``guest``). An attacker that ends before
    the phase does fails the run: its figures would be a shorter attack's."""
    attack = ATTACKS[name]
    reasons = (attack.reason, *attack.also)
    before = refused(relay, *reasons)
    before_each = by_reason(relay, DEVICE_REASONS)
    accepted = relay.metric("fairway_relay_accepted_total", tenant=HOSTILE_TENANT)
    quarantined = relay.metric_sum(QUARANTINED)
    unread = relay.metric_sum(UNREAD)
    asked = broker_logins(web)
    counts = multiprocessing.Array("q", len(COUNTS))
    child = multiprocessing.get_context("fork").Process(
        target=attacker,
        args=(env.settings.amqp_url, name, seconds, counts, passwords),
        daemon=True,
    )
    child.start()  # before the watch's thread: no thread is running when it forks
    meter = device_cpu_meter(env, relay, scheduler, web)
    reaped = children_cpu()
    with BacklogWatch(env, relay, scheduler) as watch:
        quiet = quiet_phase(env, scheduler, seconds, quiet_rate, f"{name}-")
        child.join(30)
    cpu = meter.used(reaped)
    if child.exitcode is None:
        child.terminate()
        raise RuntimeError(f"{name}: the attacker was still running 30 s after its phase")
    if child.exitcode != 0:
        raise RuntimeError(f"{name}: the attacker ended with exit code {child.exitcode}")
    # Not every message sent must reach the relay: past the hostile tenant's ingest bound
    # (in bytes or messages) the broker refuses publishes (reject-publish; the attacker
    # uses no confirms, so it is not told). And the relay acks refusals beyond the
    # budgets at FAIRWAY_RELAY_REFUSED_PACE per queue, so what the attack left in
    # `ingest.hostile` would take minutes to drain: once the relay has refused some of
    # it, the rest is purged (reported as `attacker_left_queued`), so the next phase
    # starts clean. Then wait until the relay holds nothing.
    common.poll_until(
        lambda: refused(relay, *reasons) > before or _backlog_handled(env, relay),
        120,
        0.2,
        f"{name}: refusals counted",
    )
    with env.channel() as ch:
        left = ch.queue_purge(f"ingest.{HOSTILE_TENANT}").method.message_count
    common.poll_until(
        lambda: _backlog_handled(env, relay),
        120,
        0.2,
        f"{name}: refusals counted",
    )
    return {
        "attacker_sent": counts[0],
        "attacker_sent_readings": counts[0] * attack.readings,
        "attacker_logins_admitted": counts[3],
        "attacker_first_login_refused_s": counts[4] / 1000 if counts[4] else None,
        "attacker_last_login_admitted_s": counts[5] / 1000 if counts[5] else None,
        "broker_user_answers": {k: int(v - asked[k]) for k, v in broker_logins(web).items()},
        "attacker_refused": int(refused(relay, *reasons) - before),
        "refused_by_reason": {
            k: int(v - before_each[k]) for k, v in by_reason(relay, DEVICE_REASONS).items()
        },
        "hostile_accepted_readings": int(
            relay.metric("fairway_relay_accepted_total", tenant=HOSTILE_TENANT) - accepted
        ),
        # Of them, messages refused whole before their body was read (each counted as
        # one reading above).
        "refused_unread_messages": int(relay.metric_sum(UNREAD) - unread),
        "attacker_left_queued": left,
        "attacker_disconnected": counts[1],
        "attacker_logins_refused": counts[2],
        "devices_quarantined": int(relay.metric_sum(QUARANTINED) - quarantined),
        "hostile_backlog": watch.figures(),
        "quiet": quiet,
        "cpu_seconds": cpu,
        "cpu_us_per_attacker_message": per_unit(cpu, counts[0]),
    }


class BacklogWatch:
    """The hostile tenant's queue while an attack runs: its largest depth (messages, by
    AMQP, exact) and size (bytes, from the management API's statistics, refreshed every
    few seconds) against its bounds, and what the relay accepted and the scheduler stored
    for the tenant meanwhile. Says whether ``tenant_backlog_full`` could have happened."""

    def __init__(self, env: Pipeline, relay: FairwayProcess, scheduler: FairwayProcess) -> None:
        self.env, self.relay, self.scheduler = env, relay, scheduler
        self.queue = topology.tenant_queue_name(HOSTILE_TENANT)
        self.peak_messages = self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _counts(self) -> tuple[float, float]:
        return (
            self.relay.metric("fairway_relay_accepted_total", tenant=HOSTILE_TENANT),
            self.scheduler.metric(STORED, tenant=HOSTILE_TENANT),
        )

    def __enter__(self) -> BacklogWatch:
        self._start = self._counts()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._end = self._counts()

    def _run(self) -> None:
        with self.env.channel() as ch:
            while not self._stop.wait(0.25):
                depth = ch.queue_declare(self.queue, passive=True).method.message_count
                self.peak_messages = max(self.peak_messages, depth)
                with suppress(Exception):
                    size = self.env.queue(self.queue).get("message_bytes") or 0
                    self.peak_bytes = max(self.peak_bytes, int(size))

    def figures(self) -> dict[str, Any]:
        """The peaks, the bounds, and the tenant's readings accepted and stored."""
        args = self.env.queue(self.queue).get("arguments", {})
        return {
            "peak_messages": self.peak_messages,
            "bound_messages": args.get("x-max-length"),
            "peak_bytes": self.peak_bytes,
            "bound_bytes": args.get("x-max-length-bytes"),
            "accepted": int(self._end[0] - self._start[0]),
            "stored": int(self._end[1] - self._start[1]),
        }


def run_login_attack(
    env: Pipeline,
    web: FairwayProcess,
    scheduler: FairwayProcess,
    devices: list[dict[str, str]],
    seconds: float,
    quiet_rate: float,
) -> dict[str, Any]:
    """The login flood in a child process while quiet devices log in and publish."""
    refused_metric = "fairway_broker_auth_refused_total"
    before = web.metric_sum(refused_metric)
    sent = multiprocessing.Value("q", 0)
    child = multiprocessing.get_context("fork").Process(
        target=login_attacker, args=(env.settings.amqp_url, seconds, sent), daemon=True
    )
    child.start()
    meter = device_cpu_meter(env, None, scheduler, web)
    reaped = children_cpu()
    box: dict[str, Any] = {}
    logins = threading.Thread(
        target=lambda: box.update(quiet_logins(env, devices, seconds)), daemon=True
    )
    logins.start()
    quiet = quiet_phase(env, scheduler, seconds, quiet_rate, "login_flood-")
    logins.join(seconds + 60)
    child.join(60)
    cpu = meter.used(reaped)
    return {
        "attacker_sent": sent.value,
        "attacker_refused": int(web.metric_sum(refused_metric) - before),
        "quiet": quiet,
        "quiet_login": box,
        "cpu_seconds": cpu,
        "cpu_us_per_attacker_message": per_unit(cpu, sent.value),
    }


def device_cpu_meter(
    env: Pipeline,
    relay: FairwayProcess | None,
    scheduler: FairwayProcess,
    web: FairwayProcess | None,
) -> CpuMeter:
    """CPU per process over a device-side phase: which one an attacker's message costs.
    The attacker (a child that is gone by the end) is counted by :func:`children_cpu`."""
    procs = {"relay": relay, "scheduler": scheduler, "web": web}
    pids = {role: [proc.pid] for role, proc in procs.items() if proc is not None}
    pids["benchmark"] = [os.getpid()]  # the quiet publisher and the watches
    return CpuMeter(env, pids)


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for: the
    difference across an attacker's join is the attacker's CPU."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_unit(cpu: dict[str, float], units: int) -> dict[str, float]:
    """CPU microseconds per attacker message (or login), per process."""
    return {k: r(v * 1e6 / units, 1) for k, v in cpu.items()} if units else {}


def _backlog_handled(env: Pipeline, relay: FairwayProcess) -> bool:
    """The attack's messages have all left the ingest queues and the relay."""
    for queue in (topology.INGEST, f"ingest.{HOSTILE_TENANT}"):
        try:
            if env.depth(queue) > 0:
                return False
        except pika.exceptions.ChannelClosedByBroker:  # no such queue (one shared ingest)
            pass
    return relay.metric("fairway_relay_held") == 0


def run_web_attack(
    env: Pipeline,
    side: WebSide,
    scheduler: FairwayProcess,
    name: str,
    seconds: float,
    quiet_rate: float,
) -> dict[str, Any]:
    """One web attack in a child process while the quiet admin and device work."""
    before = webside.refusals(side.procs, name)
    counts = side.manager.dict()
    target, args = webside.attacker_target(
        name, side.web_url, side.hostile_token, side.hostile_report, seconds
    )
    child = multiprocessing.get_context("fork").Process(
        target=target, args=(*args, counts), daemon=True
    )
    child.start()
    cpu = side.cpu_meter(env, child.pid)
    quiet_web, quiet = side.measure(env, scheduler, seconds, quiet_rate, f"{name}-")
    cpu_used = cpu.used()
    child.join(120)
    after = webside.refusals(side.procs, name)
    seen = dict(counts)
    counted = {k: int(after[k] - before[k]) for k in after}
    return {
        "attacker_sent": sum(seen.values()),
        "attacker_refused": sum(counted.values()),
        "attacker_answers": seen,
        "refusals_counted": counted,
        # Every refusal the attacker was answered with is counted by the server (the
        # server may count more: answers still in flight when the attacker stopped).
        "refusals_all_counted": all(counted[k] >= seen.get(k, 0) for k in counted),
        "quiet": quiet,
        "quiet_web": quiet_web,
        "cpu_seconds": cpu_used,
    }


class CpuMeter:
    """CPU seconds per process over a phase, from ``/proc``: the web app, the push
    gateway, the Celery worker, the broker node, the database (FerretDB and its
    PostgreSQL backends: shared with other users of the machine) and the attacker."""

    def __init__(self, env: Pipeline, pids: dict[str, list[int]]) -> None:
        from benchmarks.end_to_end import DatabaseCpu, broker_pids

        self.pids = {**pids, "broker": broker_pids()}
        self.database = DatabaseCpu(env)
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        from benchmarks.common import cpu_s

        now = {k: sum(cpu_s(pid) for pid in pids) for k, pids in self.pids.items()}
        now["database"] = self.database.seconds()
        return now

    def used(self, reaped: float | None = None) -> dict[str, float]:
        """CPU seconds each used since the meter started (and closes the database watch);
        with ``reaped`` (:func:`children_cpu` at the start), the ended attacker's too."""
        end = self._now()
        self.database.close()
        used = {k: r(end[k] - self.start[k], 2) for k in end}
        if reaped is not None:
            used["attacker"] = r(children_cpu() - reaped, 2)
        return used


class WebSide:
    """The web app, push gateway and Celery worker the web attacks run against, their
    users (the quiet tenant's admin, a hostile viewer) and the readings jobs read."""

    def __init__(
        self, env: Pipeline, web: FairwayProcess, port: int, gateway: FairwayProcess
    ) -> None:
        self.web_url = f"http://127.0.0.1:{port}"
        self.procs = {"web": web, "gateway": gateway}
        self.worker_pid: int | None = None
        self.manager = multiprocessing.get_context("fork").Manager()
        db = env.db
        accounts.create_user(db, webside.QUIET_USER, webside.PASSWORD, "admin", QUIET_TENANT)
        accounts.create_user(db, webside.HOSTILE_USER, webside.PASSWORD, "viewer", HOSTILE_TENANT)
        self.quiet_token = accounts.create_api_token(db, webside.QUIET_USER, 3600)
        self.hostile_token = accounts.create_api_token(db, webside.HOSTILE_USER, 3600)
        from tests.integration.test_tasks import insert_readings  # the tests' stored shape

        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
        day = hour - timedelta(days=1)
        step = 86_400 / HOSTILE_READINGS
        insert_readings(
            db,
            HOSTILE_TENANT,
            HOSTILE_DEVICES[0],
            [day + timedelta(seconds=i * step) for i in range(HOSTILE_READINGS)],
            [{"temp": 20.0 + i % 7, "hum": 50.0 + i % 3} for i in range(HOSTILE_READINGS)],
            prefix="bench",
        )
        insert_readings(
            db,
            QUIET_TENANT,
            QUIET_DEVICE,
            [hour + timedelta(seconds=10 * i) for i in range(QUIET_READINGS)],
            [{"temp": 20.0 + i % 5} for i in range(QUIET_READINGS)],
            prefix="bench",
        )
        start = hour.timestamp()
        self.quiet_report = {
            "from": start,
            "to": start + 3600,
            "bucket": 600,
            "device": QUIET_DEVICE,
        }
        self.hostile_report = {"from": day.timestamp(), "to": start, "bucket": 600}
        self.quiet = webside.QuietWeb(
            self.web_url, self.quiet_token, self.quiet_report, QUIET_DEVICE
        )

    def cpu_meter(self, env: Pipeline, attacker: int | None) -> CpuMeter:
        """A CPU meter over the web side's processes (and the attacker's, if any)."""
        pids = {role: [proc.pid] for role, proc in self.procs.items()}
        if self.worker_pid is not None:
            pids["celery_worker"] = _with_children(self.worker_pid)
        if attacker is not None:
            pids["attacker"] = [attacker]
        return CpuMeter(env, pids)

    def measure(
        self, env: Pipeline, scheduler: FairwayProcess, seconds: float, rate: float, tag: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The quiet admin's figures and, meanwhile, the quiet device's readings'."""
        box: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: box.update(self.quiet.run(seconds)), daemon=True)
        thread.start()
        readings = quiet_phase(env, scheduler, seconds, rate, tag)
        thread.join(180)
        return box, readings


def run_all(
    args: Any, names: list[str], web_names: list[str], seconds: float, port: int, auth_port: int
) -> tuple[dict[str, bool], dict[str, Any], dict[str, Any]]:
    """Every phase on one fresh vhost and database: processes alive at the end, the
    unloaded figures, and each attack's. The web app serves on ``port`` and answers the
    broker's device logins on ``auth_port``."""
    # The run declares the cpu processes it starts (FAIRWAY_JOBS_CPU_PROCESSES); one process
    # has no room for a reserve.
    pool = {"jobs_cpu_processes": args.job_workers}
    if args.job_workers < 2:
        pool["jobs_reserved_processes"] = 0
    with (
        common.bench_env("bench-iso", device_rate=DEVICE_RATE, **pool) as env,
        ExitStack() as stack,
    ):
        env.tenant(QUIET_TENANT)
        env.device(QUIET_TENANT, QUIET_DEVICE)
        env.tenant(HOSTILE_TENANT, max_backlog=HOSTILE_BACKLOG)
        if args.hostile_rate:  # the tenant's plan, as an operator sets it
            registry.update_tenant(env.db, HOSTILE_TENANT, {"max_rate": args.hostile_rate})
        hostile = sorted({d for a in ATTACKS.values() for d in a.devices} | set(HOSTILE_DEVICES))
        passwords = {d: env.device(HOSTILE_TENANT, d)["password"] for d in hostile}
        logins = [env.device(QUIET_TENANT, f"quiet-login-{i}") for i in range(2 * LOGINS)]
        gateway_port = free_port()
        web = env.start("web", web_port=port, broker_auth_port=auth_port, gateway_port=gateway_port)
        relay = env.start("relay")
        scheduler = env.start("scheduler")
        side: WebSide | None = None
        if web_names:
            gateway = env.start("gateway", gateway_port=gateway_port)
            worker = celery_workers.start(
                env.with_(metrics_port=free_port()),
                common.LOGS / "isolation-worker.log",
                concurrency=args.job_workers,
            )
            stack.callback(celery_workers.stop, worker)
            side = WebSide(env, web, port, gateway)
            side.worker_pid = worker.pid
        say("unloaded")
        meter = device_cpu_meter(env, relay, scheduler, web)
        unloaded = quiet_phase(env, scheduler, seconds, args.quiet_rate, "base-")
        unloaded["cpu_seconds"] = meter.used()
        unloaded_login: dict[str, Any] = {}
        if "login_flood" in names:  # device logins reach only the broker's auth port
            unloaded_login = quiet_logins(env, logins[:LOGINS], seconds)
        say(f"  {unloaded}, logins {unloaded_login}")
        unloaded_web: dict[str, Any] = {}
        if side is not None:
            cpu = side.cpu_meter(env, None)
            unloaded_web, unloaded_side = side.measure(
                env, scheduler, seconds, args.quiet_rate, "web-base-"
            )
            unloaded_web["cpu_seconds"] = cpu.used()
            unloaded_web["stored"] = unloaded_side
            say(f"  web {unloaded_web}")
        attacks: dict[str, Any] = {}
        for name in names:
            say(f"attack {name}")
            if name in webside.WEB_ATTACKS:
                assert side is not None
                outcome = run_web_attack(env, side, scheduler, name, seconds, args.quiet_rate)
                attacks[name] = web_figures(outcome, unloaded_web)
                say(f"  {attacks[name]}")
                continue
            if name == "login_flood":
                outcome = run_login_attack(
                    env, web, scheduler, logins[LOGINS:], seconds, args.quiet_rate
                )
            else:
                outcome = run_attack(
                    env,
                    relay,
                    scheduler,
                    name,
                    seconds,
                    args.quiet_rate,
                    passwords if args.attacker_as == "device" else None,
                    web,
                )
            quiet = outcome["quiet"]
            attacks[name] = {
                "quiet_p99_ratio": common.ratio(quiet["p99_ms"], unloaded["p99_ms"]),
                "quiet_errors": quiet["errors"],
                "attacker_sent": outcome["attacker_sent"],
                "attacker_refused": outcome["attacker_refused"],
                "quiet": quiet,
            }
            for key in (
                "attacker_left_queued",
                "attacker_disconnected",
                "attacker_logins_refused",
                "attacker_logins_admitted",
                "attacker_first_login_refused_s",
                "attacker_last_login_admitted_s",
                "broker_user_answers",
                "devices_quarantined",
                "hostile_backlog",
                "attacker_sent_readings",
                "refused_by_reason",
                "hostile_accepted_readings",
                "refused_unread_messages",
                "cpu_seconds",
                "cpu_us_per_attacker_message",
            ):
                if key in outcome:
                    attacks[name][key] = outcome[key]
            if "quiet_login" in outcome:
                login = outcome["quiet_login"]
                attacks[name]["quiet_login_p99_ratio"] = common.ratio(
                    login["p99_ms"], unloaded_login["p99_ms"]
                )
                attacks[name]["quiet_errors"] += login["failures"]
                attacks[name]["quiet_login"] = login
            say(f"  {attacks[name]}")
        alive = {role: proc.alive() for role, proc in env.procs.items()}
        if side is not None:
            alive["celery_worker"] = worker.poll() is None
    unloaded_all: dict[str, Any] = {**unloaded, "login": unloaded_login}
    if unloaded_web:
        unloaded_all["web_side"] = unloaded_web
    return alive, unloaded_all, attacks


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    p.add_argument("--quiet-rate", type=float, default=20.0, help="quiet readings per second")
    p.add_argument("--only", default="", help="comma-separated attacks (default: all)")
    p.add_argument(
        "--job-workers",
        type=int,
        default=2,
        help="the Celery worker's pool processes (default 2, as compose runs; also the run's"
        " FAIRWAY_JOBS_CPU_PROCESSES)",
    )
    p.add_argument(
        "--attacker-as",
        choices=("device", "guest"),
        default="device",
        help="device attacks publish as the hostile devices (logins through fairway web's"
        " broker-auth port, so device quarantine applies) or as the guest service account",
    )
    p.add_argument(
        "--private-broker",
        action="store_true",
        help="a RabbitMQ node of the run's own (scripts/services.sh's configuration), asking"
        " this run's web app's broker-auth port (a free one) about device logins: neither"
        " port 8080 nor its lock",
    )
    p.add_argument(
        "--flood-devices",
        type=int,
        default=len(ATTACKS["backlog_flood"].devices),
        help="backlog_flood's devices, each at the device rate",
    )
    p.add_argument(
        "--hostile-rate",
        type=float,
        default=0.0,
        help="the hostile tenant's plan: accepted readings per second (max_rate; 0: none,"
        " the default, as before plans existed)",
    )
    args = p.parse_args()
    flood_devices(args.flood_devices)
    seconds = max(5.0, args.seconds * args.scale)
    everything = [*ATTACKS, "login_flood", *webside.WEB_ATTACKS]
    names = [n for n in args.only.split(",") if n] or everything
    unknown = sorted(set(names) - set(everything))
    if unknown:
        p.error(f"unknown attacks {unknown}; known: {everything}")
    web_names = [n for n in names if n in webside.WEB_ATTACKS]
    result = common.meta(
        NAME,
        args.scale,
        seconds_per_phase=seconds,
        quiet_rate=args.quiet_rate,
        private_broker=args.private_broker,
        job_workers=args.job_workers,
        hostile_rate=args.hostile_rate,
        flood_devices=args.flood_devices,
    )
    with ExitStack() as held:
        as_devices = args.attacker_as == "device" and any(n in ATTACKS for n in names)
        if args.private_broker:
            port, auth_port = free_port(), free_port()
            common.use_private_broker(held, f"http://127.0.0.1:{auth_port}/broker")
        elif "login_flood" in names or as_devices:
            # The shared broker asks port 8082 (the web app on 8080's auth port) about devices.
            lock = held.enter_context(open(WEB_8080_LOCK, "a"))
            say(f"waiting for {WEB_8080_LOCK}")
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, after the run
            port, auth_port = common.BASE.web_port, common.BASE.broker_auth_port
        else:
            port, auth_port = free_port(), free_port()
        alive, unloaded_all, attacks = run_all(args, names, web_names, seconds, port, auth_port)
    targets: dict[str, Any] = {}
    for name, a in attacks.items():
        for key in ("quiet_p99_ratio", *WEB_RATIOS, "quiet_login_p99_ratio"):
            if key in a:
                ratio = a[key]
                label = key.removesuffix("_ratio")
                targets[f"{name}_{label}_ratio<=2"] = {
                    "value": ratio,
                    "met": ratio is not None and ratio <= 2,
                }
        targets[f"{name}_quiet_errors==0"] = {
            "value": a["quiet_errors"],
            "met": a["quiet_errors"] == 0,
        }
        targets[f"{name}_attacker_refused>0"] = {
            "value": a["attacker_refused"],
            "met": a["attacker_refused"] > 0,
        }
        if "refusals_all_counted" in a:
            targets[f"{name}_refusals_counted"] = {
                "value": a["refusals_counted"],
                "met": a["refusals_all_counted"],
            }
    targets["processes_alive"] = {"value": alive, "met": all(alive.values())}
    common.emit({**result, "unloaded": unloaded_all, "attacks": attacks, "targets": targets})


WEB_RATIOS = ("quiet_job_p99_ratio", "quiet_event_p99_ratio", "quiet_stored_p99_ratio")


def web_figures(outcome: dict[str, Any], unloaded: dict[str, Any]) -> dict[str, Any]:
    """A web attack's figures: ratios of each quiet activity's p99 to unloaded, errors."""
    quiet, readings = outcome["quiet_web"], outcome["quiet"]
    base = unloaded

    def ratio(kind: str) -> float | None:
        return common.ratio(
            quiet.get(kind, {}).get("p99_ms", 0), base.get(kind, {}).get("p99_ms", 0)
        )

    errors = sum(quiet.get(k, {}).get("errors", 1) for k in ("web", "job", "event"))
    return {
        "quiet_p99_ratio": ratio("web"),
        "quiet_job_p99_ratio": ratio("job"),
        "quiet_event_p99_ratio": ratio("event"),
        "quiet_stored_p99_ratio": common.ratio(readings["p99_ms"], base["stored"]["p99_ms"]),
        "quiet_errors": errors + readings["errors"],
        "attacker_sent": outcome["attacker_sent"],
        "attacker_refused": outcome["attacker_refused"],
        "attacker_answers": outcome["attacker_answers"],
        "refusals_counted": outcome["refusals_counted"],
        "refusals_all_counted": outcome["refusals_all_counted"],
        "quiet": quiet,
        "quiet_stored": readings,
        "cpu_seconds": outcome["cpu_seconds"],
    }


def _with_children(pid: int) -> list[int]:
    """``pid`` and its direct children (a Celery worker's pool processes)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(c) for c in f.read().split())]
    except OSError:
        return [pid]


if __name__ == "__main__":
    main()
