"""``fairway demo``: the whole product on the local services, in one command.

``fairway demo`` (what ``make demo`` runs) checks its prerequisites (signing key, free
ports, RabbitMQ with its management API, MongoDB) and stops with every problem listed
before it prints or starts anything. Then it provisions three demo tenants (weights
1, 2, 1) with their devices and three demo users, starts every process (relay,
scheduler, monitor, archiver, gateway, web, a Celery worker for the ``cpu`` queue and
one for ``maintenance``, Celery beat) and the simulated fleet
(:mod:`fairway.devtools.fleet`), waits until each serves, prints the dashboard URL and
the demo credentials, and stays up until Ctrl-C (or SIGTERM). Then it stops the fleet
first and every process in order, each with SIGTERM and its own clean drain.

Children run in their own sessions, so a Ctrl-C in the terminal reaches only this
process, which then stops them in order instead of every process dying at once.

``fairway demo --short`` is the ten-second run: a relay, a scheduler and simulated
devices, then the readings that landed.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from pymongo.database import Database

from fairway.devtools import celery_workers, prereqs, processes, simulator
from fairway.devtools.fleet import FleetPlan
from fairway.kernel import topology
from fairway.kernel.batch_document import READINGS, each_reading, with_batch_fields
from fairway.kernel.contract import tenant_id_range
from fairway.kernel.settings import Settings
from fairway.provision import create_user, ensure_devices
from fairway.storage import accounts, mongo, registry
from tasks.base import CPU, MAINTENANCE


def run_demo(settings: Settings, duration: float) -> None:
    """Relay + scheduler + 3 tenants x 5 devices (one noisy), then show what landed."""
    problems = prereqs.service_problems(settings)
    if problems:
        raise DemoError(problems)
    by_tenant = {t: simulator.device_ids(t, 5) for t in simulator.tenant_ids(3)}
    ensure_devices(settings, by_tenant)
    db = mongo.connect(settings)
    before = _counts(db, by_tenant)
    logs = Path(".services/logs")
    logs.mkdir(parents=True, exist_ok=True)
    children = [
        processes.start(["relay"], settings, logs / "demo-relay.log"),
        processes.start(["scheduler"], settings, logs / "demo-scheduler.log"),
    ]
    try:
        click.echo(f"publishing for {duration:.0f} s: sim01 is noisy (10x)", err=True)
        summary = simulator.Simulator(
            settings,
            simulator.weighted_devices(by_tenant, {"sim01": 10}),
            rate=1000,
            duration=duration,
        ).run()
        click.echo(simulator.summary_json(summary))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            landed = sum(_counts(db, by_tenant).values()) - sum(before.values())
            if landed >= summary.readings:
                break
            time.sleep(0.5)
    finally:
        for child in children:
            processes.stop(child)
    after = _counts(db, by_tenant)
    for tenant, count in after.items():
        click.echo(f"{tenant}: {count - before[tenant]} new readings stored ({count} in all)")
    for doc in latest_readings(db, 3):
        click.echo(f"  {doc['_id']}  {doc['ts']:%H:%M:%S.%f}  {doc['values']}")


def latest_readings(db: Database, n: int) -> list[dict[str, Any]]:
    """The ``n`` latest readings, newest first, in either layout of ``telemetry``: a batch
    document's ``ts`` is its latest reading's, so the ``n`` latest documents hold them."""
    projection = with_batch_fields({"_id": 1, "ts": 1, "values": 1})
    docs = db[mongo.TELEMETRY].find({}, projection).sort("ts", -1).limit(n)
    return sorted(each_reading(docs), key=lambda d: (d["ts"], d["_id"]), reverse=True)[:n]


def _counts(db: Database, by_tenant: dict[str, list[str]]) -> dict[str, int]:
    """Readings stored per tenant (a batch document counts its readings).

    One ``_id`` range read of each tenant's documents projected to ``r.ts``; measured on
    FerretDB 1.24 no slower than the ``count_documents`` it replaced (10,000 readings one
    document each: 0.85-1.0 s either way; as 1,000 batch documents: 0.65-0.75 s, against
    1.0 s counting them stored alone), and FerretDB implements neither ``$size`` nor
    ``$cond`` to count them server-side in one pass.
    """
    counts = {}
    for tenant in by_tenant:
        low, high = tenant_id_range(tenant)  # the tenant is in _id only
        docs = db[mongo.TELEMETRY].find(
            {"_id": {"$gte": low, "$lt": high}}, {"_id": 0, f"{READINGS}.ts": 1}, batch_size=10_000
        )
        counts[tenant] = sum(len(d[READINGS]) if READINGS in d else 1 for d in docs)
    return counts


# -- the whole product ------------------------------------------------------------------
TENANTS = 3
DEVICES_PER_TENANT = 5
WEIGHTS = {"sim01": 1, "sim02": 2, "sim03": 1}
DEMO_USERS: tuple[tuple[str, str, str | None], ...] = (
    ("demo-operator", accounts.OPERATOR, None),
    ("demo-admin", accounts.ADMIN, "sim01"),
    ("demo-viewer", accounts.VIEWER, "sim01"),
)
READY_TIMEOUT_S = 90.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DemoError(Exception):
    """The demo cannot start (or a process failed to); ``problems`` says why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Child:
    """A running demo process: how to stop it and how to tell it is serving."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop: Callable[[subprocess.Popen[bytes]], int] = processes.stop
    ready: Callable[[], bool] = lambda: True
    metrics_port: int = 0


@dataclass
class DemoOptions:
    """What the demo runs; the defaults are ``make demo``'s."""

    password: str = "fairway-demo-password"
    logs: Path = Path(".services/logs")
    plan: FleetPlan = field(
        default_factory=lambda: FleetPlan(
            steady={
                t: simulator.device_ids(t, DEVICES_PER_TENANT)
                for t in simulator.tenant_ids(TENANTS)
            }
        )
    )
    # The cpu worker's pool processes, declared to every process it starts as
    # FAIRWAY_JOBS_CPU_PROCESSES (fair dispatch releases jobs to fit them); None: as many
    # as FAIRWAY_JOBS_CPU_PROCESSES declares (2 by default, one kept for a quiet tenant).
    cpu_workers: int | None = None


class Demo:
    """Every Fairway process and the simulated fleet, started and stopped in order."""

    def __init__(self, settings: Settings, options: DemoOptions) -> None:
        if options.cpu_workers is not None:  # declared as run (the start check applies)
            settings = Settings.from_env(settings.environ(), jobs_cpu_processes=options.cpu_workers)
        self.settings, self.options = settings, options
        self.children: list[Child] = []
        # A plain flag, not an Event: a signal handler may run while this thread holds
        # the Event's lock (entering or leaving wait), and Event.set would wait for ever.
        self._stop_requested = False

    @property
    def cpu_processes(self) -> int:
        """The cpu worker's pool processes: what every process is told it has."""
        return self.settings.jobs_cpu_processes

    @property
    def url(self) -> str:
        """The dashboard."""
        return f"http://{self.settings.web_host}:{self.settings.web_port}/"

    # -- before anything --------------------------------------------------------------
    def problems(self) -> list[str]:
        """Everything that would stop the demo, found without changing anything."""
        s = self.settings
        found = prereqs.secret_problems(s)
        web_ports = [("web", s.web_port)]
        if s.broker_auth_port:
            web_ports.append(("broker auth", s.broker_auth_port))
        found += prereqs.port_problems(s.web_host, web_ports)
        found += prereqs.port_problems(s.gateway_host, [("gateway", s.gateway_port)])
        services = prereqs.service_problems(s)
        found += services
        if not services:
            found += self._password_problems()
        return found

    def _password_problems(self) -> list[str]:
        db = mongo.connect(self.settings)
        out = []
        for user_id, _role, _tenant in DEMO_USERS:
            if accounts.get_user(db, user_id) is None:
                continue
            if accounts.authenticate(db, user_id, self.options.password) is None:
                out.append(
                    f"user {user_id} exists with another password (an earlier demo's): pass "
                    "that one with --password or FAIRWAY_DEMO_PASSWORD"
                )
        return out

    # -- starting ---------------------------------------------------------------------
    def provision(self) -> None:
        """Demo tenants (with weights), their devices, the misbehaving ones, the users."""
        by_tenant = self.options.plan.registered()
        ensure_devices(self.settings, by_tenant)
        db = mongo.connect(self.settings)
        # Once here, so that the processes starting together do not all build them at once.
        mongo.ensure_indexes(db, self.settings.postgres_url)
        for tenant, weight in WEIGHTS.items():
            if tenant in by_tenant:
                registry.set_tenant_weight(db, tenant, weight)
        for user_id, role, home in DEMO_USERS:
            create_user(self.settings, db, user_id, self.options.password, role, home, True)

    def start(self) -> None:
        """Start every process and the fleet; return once each serves (DemoError if not)."""
        self.options.logs.mkdir(parents=True, exist_ok=True)
        tenants = list(self.options.plan.steady)
        queues = {
            "relay": [topology.INGEST],
            "scheduler": [topology.tenant_queue_name(t) for t in tenants],
            "archiver": [topology.REJECTED],
            "monitor": ["monitor.telemetry"],
        }
        with ThreadPoolExecutor(2) as pool:
            # Celery workers take seconds to start: alongside the others, not after them.
            workers = [
                pool.submit(self._start_worker, "worker-cpu", (CPU,), self.cpu_processes),
                pool.submit(self._start_worker, "worker-maintenance", (MAINTENANCE,), 1),
            ]
            for role in ("scheduler", "relay", "archiver", "monitor"):
                self._start_fairway(role, self._consuming(queues[role]))
            self._start_fairway("gateway", self._answers(self._gateway_url() + "readyz"))
            # The Tenants page reads the scheduler's lag histogram from its metrics endpoint.
            scheduler = next(c for c in self.children if c.name == "scheduler")
            urls = (
                self.settings.scheduler_metrics_urls or f"http://127.0.0.1:{scheduler.metrics_port}"
            )
            self._start_fairway(
                "web", self._answers(self.url + "readyz"), {"scheduler_metrics_urls": urls}
            )
            beat_log = self.options.logs / "demo-beat.log"
            schedule = self.options.logs / "demo-celerybeat-schedule"
            beat = celery_workers.start_beat(self.settings, beat_log, schedule)
            self.children.append(Child("beat", beat, beat_log, celery_workers.stop))
            problems: list[str] = []
            for started in workers:
                try:
                    self.children.append(started.result())
                except DemoError as exc:  # the other one is still tracked, and stopped
                    problems += exc.problems
            if problems:
                raise DemoError(problems)
        self._wait_ready()
        fleet = ["demo-fleet", *fleet_arguments(self.options)]
        self._start_fairway("fleet", lambda: True, {}, fleet)

    def _gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}/"

    def _start_fairway(
        self,
        name: str,
        ready: Callable[[], bool],
        overrides: dict[str, Any] | None = None,
        command: list[str] | None = None,
    ) -> None:
        log = self.options.logs / f"demo-{name}.log"
        port = processes.free_port()
        settings = Settings.from_env(
            self.settings.environ(), metrics_port=port, **(overrides or {})
        )
        proc = processes.start(command or [name], settings, log, new_session=True)
        self.children.append(Child(name, proc, log, processes.stop, ready, port))

    def _start_worker(self, name: str, queues: tuple[str, ...], concurrency: int) -> Child:
        log = self.options.logs / f"demo-{name}.log"
        try:
            proc = celery_workers.start(self.settings, log, queues, concurrency, ready_timeout=90)
        except (RuntimeError, TimeoutError) as exc:
            raise DemoError([f"{name} did not start: {exc}"]) from None
        return Child(name, proc, log, stop_worker)

    def _consuming(self, queues: list[str]) -> Callable[[], bool]:
        return lambda: all(celery_workers.consumers(self.settings, q) > 0 for q in queues)

    @staticmethod
    def _answers(url: str) -> Callable[[], bool]:
        def probe() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        return probe

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = list(self.children)
        while waiting:
            if self._stop_requested:
                raise KeyboardInterrupt
            for child in list(waiting):
                if child.proc.poll() is not None:
                    raise DemoError(
                        [f"{child.name} exited with {child.proc.returncode}; see {child.log}"]
                    )
                if child.ready():
                    waiting.remove(child)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(f"{c.name} (log {c.log})" for c in waiting)
                raise DemoError([f"not serving after {READY_TIMEOUT_S:.0f} s: {names}"])
            if waiting:
                time.sleep(0.3)

    # -- running and stopping -----------------------------------------------------------
    def request_stop(self, *_args: Any) -> None:
        """Ask :meth:`wait` to return (signal handlers, tests)."""
        self._stop_requested = True

    def wait(self) -> Child | None:
        """Until a stop is requested (None) or a process exits (that process)."""
        while True:
            time.sleep(0.2)  # a stop signal is seen within 0.2 s (its handler sets the flag)
            if self._stop_requested:
                return None
            for child in self.children:
                if child.proc.poll() is not None:
                    return child

    def stop(self) -> dict[str, int]:
        """Stop the fleet, then every other process at once (each drains on SIGTERM), the
        scheduler last so it writes what the relay confirmed; their exit codes."""
        phases = [
            [c for c in self.children if c.name == "fleet"],
            [c for c in self.children if c.name not in ("fleet", "scheduler")],
            [c for c in self.children if c.name == "scheduler"],
        ]
        codes: dict[str, int] = {}
        for phase in phases:
            if phase:
                with ThreadPoolExecutor(len(phase)) as pool:
                    stopped = pool.map(lambda c: c.stop(c.proc), phase)
                    codes.update(zip([c.name for c in phase], stopped, strict=True))
        self.children = []
        return codes


WORKER_WARM_S = 10.0  # a running report may finish within this, else it is interrupted


def stop_worker(proc: subprocess.Popen[bytes]) -> int:
    """Warm shutdown (finish the running job) for a few seconds, then a cold one (SIGQUIT:
    the job's message is not acked, so it runs again at the next start: jobs are
    idempotent), then SIGKILL. A demo should not wait minutes for a report."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(WORKER_WARM_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGQUIT)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            celery_workers.kill(proc)
    return int(proc.returncode)


def fleet_arguments(options: DemoOptions) -> list[str]:
    """``fairway demo-fleet`` options for ``options.plan``."""
    plan = options.plan
    return [
        "--tenants",
        str(len(plan.steady)),
        "--devices",
        str(max(map(len, plan.steady.values()), default=0)),
        "--period",
        str(plan.period_s),
        "--flood-rate",
        str(plan.flood_rate),
        "--second-rate",
        str(plan.second_rate),
        "--wave",
        str(plan.wave_s),
        "--wave-every",
        str(plan.wave_every_s),
        "--first-wave",
        str(plan.first_wave_s),
        "--misbehave-every",
        str(plan.misbehave_every_s),
    ]


def describe(demo: Demo) -> str:
    """What the demo prints once everything serves."""
    plan, bad = demo.options.plan, demo.options.plan.misbehaving
    steady = ", ".join(f"{t} ({len(d)})" for t, d in plan.steady.items())
    weights = ", ".join(f"{t} {w}" for t, w in WEIGHTS.items() if t in plan.steady)
    lines = [
        "Fairway demo: every process is serving.",
        f"  dashboard   {demo.url}",
        f"  password    {demo.options.password}",
        "  users       demo-operator (operator: every tenant, the Tenants page)",
        "              demo-admin (admin of sim01: devices, rejections and replay)",
        "              demo-viewer (viewer of sim01: follows devices live)",
        f"  devices     {steady}, one reading every {plan.period_s:g} s each",
        f"  weights     {weights}",
        f"  fairness    every {plan.wave_every_s:g} s {plan.noisy} floods "
        f"({plan.flood_rate:g}/s for {plan.wave_s:g} s from {plan.noisy}-f*) while "
        f"{plan.second} bursts ({plan.second_rate:g}/s): see Tenants",
        f"  rejections  {bad.bad_clock} (clock an hour fast), {bad.malformed} (broken "
        f"JSON), {bad.over_rate} (bursts past its rate), {bad.unknown} (not registered)",
        f"  logs        {demo.options.logs}/demo-*.log",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def serve_demo(settings: Settings, options: DemoOptions) -> int:
    """Run the whole product until Ctrl-C or SIGTERM; the exit status."""
    demo = Demo(settings, options)
    problems = demo.problems()
    if problems:
        raise DemoError(problems)
    # The readiness probes' passive declares of queues not declared yet are expected.
    logging.getLogger("pika").setLevel(logging.ERROR)
    # Explicit handlers: a shell starting the demo in the background ignores SIGINT.
    handlers = {sig: signal.signal(sig, demo.request_stop) for sig in STOP_SIGNALS}
    exited = None
    try:
        demo.provision()
        demo.start()
        click.echo(describe(demo))
        exited = demo.wait()
        if exited is not None:
            click.echo(
                f"{exited.name} exited with {exited.proc.returncode}; see {exited.log}", err=True
            )
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("stopping the demo ...", err=True)
        codes = demo.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    unclean = {name: rc for name, rc in codes.items() if rc != 0}
    if unclean:
        click.echo(f"stopped; not cleanly: {unclean}", err=True)
        return 1
    click.echo(f"stopped cleanly: {', '.join(codes)}", err=True)
    return 1 if exited is not None else 0
