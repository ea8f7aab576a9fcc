"""Shared helpers of the benchmarks: isolated vhost and database, processes, statistics.

Every benchmark run gets a fresh RabbitMQ vhost (created and deleted through the
management API) and a fresh database, so runs never see each other's messages and
leave nothing behind. Broker and database locations come from the environment:

* ``FAIRWAY_BENCH_AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``; the
  vhost path is replaced per run)
* ``FAIRWAY_BENCH_MGMT_URL`` (default ``http://guest:guest@127.0.0.1:15672``)
* ``FAIRWAY_BENCH_MONGO_URL`` (default ``mongodb://127.0.0.1:27017/``; the database
  path is replaced per run)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
from pymongo import MongoClient
from pymongo.database import Database

from fairway.amqp import management as rabbitmq_api
from fairway.devtools import processes
from fairway.devtools.processes import free_port, wait_for
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.storage import mongo

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
LOGS = OUT / "logs"

AMQP_BASE = os.environ.get("FAIRWAY_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MGMT_URL = os.environ.get("FAIRWAY_BENCH_MGMT_URL", "http://guest:guest@127.0.0.1:15672")
MONGO_BASE = os.environ.get("FAIRWAY_BENCH_MONGO_URL", "mongodb://127.0.0.1:27017/")


# -- output ----------------------------------------------------------------------------
def say(message: str) -> None:
    """Progress on stderr (stdout carries only the result JSON)."""
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object on stdout."""
    print(json.dumps(result, indent=2, default=str), flush=True)


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--scale`` every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="size factor: 1.0 = the issue's sizes, 0.1 for a quick run",
    )
    return p


def scaled(value: float, scale: float, minimum: int = 1) -> int:
    """``value * scale`` as an int, at least ``minimum``."""
    return max(minimum, round(value * scale))


def meta(name: str, scale: float, **extra: Any) -> dict[str, Any]:
    """What every result records about its run: when, where, at which scale."""
    return {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "scale": scale,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "note": "shared, noisy machine: compare ratios within one run, not absolutes",
        },
        "git": _git_rev(),
        **extra,
    }


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_rev() -> str:
    with suppress(Exception):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    return "unknown"


# -- statistics ----------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) with linear interpolation; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2); 1.0 = perfectly equal."""
    if not values:
        return math.nan
    square_sum = sum(x * x for x in values)
    return (sum(values) ** 2) / (len(values) * square_sum) if square_sum else math.nan


def ratio(a: float, b: float, digits: int = 3) -> float | None:
    """``a / b`` rounded, or None when ``b`` is zero."""
    return round(a / b, digits) if b else None


def paired_ratios(rounds: list[dict[str, Any]], a: str, b: str) -> list[float]:
    """Per round, ``a``'s rate over ``b``'s (contenders of a round ran back to back)."""
    return [round(rd[a]["rate"] / rd[b]["rate"], 3) for rd in rounds if rd[b]["rate"]]


def median_ratio(rounds: list[dict[str, Any]], a: str, b: str) -> float | None:
    """Median of :func:`paired_ratios`: robust to the machine's load drifting between
    rounds, which a ratio of medians is not."""
    values = paired_ratios(rounds, a, b)
    return round(statistics.median(values), 3) if values else None


def r(value: float, digits: int = 1) -> float:
    """Round for the JSON output."""
    return round(value, digits)


# -- RabbitMQ management API ---------------------------------------------------------
def management(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the RabbitMQ management HTTP API (``path`` below ``/api/``)."""
    return rabbitmq_api.call(MGMT_URL, method, path, body)


def unique(prefix: str) -> str:
    """A fresh name: ``<prefix>-<time>-<random>`` (valid as vhost and database name)."""
    return f"{prefix}-{int(time.time())}-{uuid.uuid4().hex[:6]}"


@contextmanager
def temp_vhost(prefix: str) -> Iterator[str]:
    """A fresh vhost on which guest has every right; yields its AMQP URL; deleted after."""
    name = unique(prefix)
    quoted = urllib.parse.quote(name, safe="")
    rabbitmq_api.create_vhost(MGMT_URL, name)
    try:
        parts = urllib.parse.urlsplit(AMQP_BASE)
        yield urllib.parse.urlunsplit(parts._replace(path="/" + quoted))
    finally:
        with suppress(Exception):
            rabbitmq_api.delete_vhost(MGMT_URL, name)


@contextmanager
def temp_db(prefix: str) -> Iterator[str]:
    """A fresh database name; yields its MongoDB URL; dropped after."""
    name = unique(prefix).replace("-", "_")
    parts = urllib.parse.urlsplit(MONGO_BASE)
    url = urllib.parse.urlunsplit(parts._replace(path="/" + name))
    try:
        yield url
    finally:
        client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=5000)
        with suppress(Exception):
            client.drop_database(name)
        client.close()


def settings_for(amqp_url: str, mongo_url: str, **overrides: Any) -> Settings:
    """Fairway settings pointing at one benchmark vhost and database."""
    return Settings.from_env(amqp_url=amqp_url, mongo_url=mongo_url, **overrides)


@dataclass
class Env:
    """One benchmark's isolated vhost + database."""

    settings: Settings
    _db: Database | None = field(default=None, repr=False)

    @property
    def db(self) -> Database:
        """The run's database (one client, opened on first use)."""
        if self._db is None:
            self._db = mongo.connect(self.settings)
        return self._db

    def with_(self, **overrides: Any) -> Settings:
        """These settings with some fields changed."""
        return Settings.from_env({}, **{**_fields(self.settings), **overrides})

    @contextmanager
    def channel(self) -> Iterator[Any]:
        """A blocking channel on this vhost."""
        with channel(self.settings) as ch:
            yield ch


def _fields(settings: Settings) -> dict[str, Any]:
    return {k: getattr(settings, k) for k in settings.__dataclass_fields__}


@contextmanager
def bench_env(prefix: str, **overrides: Any) -> Iterator[Env]:
    """Fresh vhost and database, Fairway's shared topology declared, indexes created."""
    with temp_vhost(prefix) as amqp_url, temp_db(prefix) as mongo_url:
        env = Env(settings_for(amqp_url, mongo_url, **overrides))
        try:
            with env.channel() as ch:
                topology.declare(ch, env.settings)
            mongo.ensure_indexes(env.db)
            yield env
        finally:
            if env._db is not None:
                env._db.client.close()


# -- AMQP helpers --------------------------------------------------------------------
@contextmanager
def channel(settings: Settings) -> Iterator[Any]:
    """A blocking channel on ``settings.amqp_url``."""
    params = pika.URLParameters(settings.amqp_url)
    params.heartbeat = 0  # benchmark helpers may sit idle while something else runs
    connection = pika.BlockingConnection(params)
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def queue_counts(ch: Any, names: Iterable[str]) -> dict[str, int]:
    """Ready messages per queue (passive declare; unacked deliveries are not counted)."""
    return {n: ch.queue_declare(n, passive=True).method.message_count for n in names}


def wait_ready(
    ch: Any, names: Sequence[str], expected: int, timeout: float = 600.0, what: str = ""
) -> int:
    """Wait until the queues hold ``expected`` ready messages in all; return the total."""
    deadline = time.monotonic() + timeout
    total = -1
    while time.monotonic() < deadline:
        total = sum(queue_counts(ch, names).values())
        if total >= expected:
            return total
        time.sleep(0.1)
    raise TimeoutError(f"{what or 'queues'}: {total} of {expected} messages after {timeout} s")


def publish_all(
    ch: Any,
    items: Iterable[tuple[str, str, bytes]],
    properties: pika.BasicProperties | None = None,
) -> int:
    """Publish (exchange, routing key, body) items without confirms; return the count.

    Used to pre-fill queues: callers check the queue depths afterwards
    (:func:`wait_ready`), which is cheaper than a confirm round trip per message.
    Publishes go through the blocking channel's underlying asynchronous channel and
    the socket is flushed every 500 messages: about 2.5x the rate of
    ``BlockingChannel.basic_publish``, which flushes after every message.
    """
    props = properties or pika.BasicProperties(delivery_mode=2, content_type="application/json")
    impl = ch._impl
    n = 0
    for exchange, routing_key, body in items:
        impl.basic_publish(exchange, routing_key, body, props)
        n += 1
        if n % 500 == 0:
            ch.connection.process_data_events(0)
    ch.connection.process_data_events(0)
    return n


# -- processes -----------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a process, in kB."""
    out: dict[str, int] = {}
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Prometheus text format -> {metric name: {label string: value}}."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, brace, labels = key.partition("{")
        out.setdefault(name, {})[brace and labels.rstrip("}")] = float(value)
    return out


def label_values(samples: dict[str, dict[str, float]], name: str, label: str) -> dict[str, float]:
    """{value of ``label``: sample} for one metric."""
    out: dict[str, float] = {}
    for labels, value in samples.get(name, {}).items():
        for part in labels.split(","):
            k, _, v = part.partition("=")
            if k == label:
                out[v.strip('"')] = value
    return out


@dataclass
class FairwayProcess:
    """A running ``python -m fairway ...`` child and its metrics endpoint."""

    proc: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while it runs."""
        return self.proc.poll() is None

    def metrics(self, *names: str) -> dict[str, dict[str, float]]:
        """Scrape its Prometheus endpoint (only ``names`` if given: much cheaper)."""
        query = "?" + "&".join(f"name[]={n}" for n in names) if names else ""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return parse_metrics(response.read().decode())

    def metric_sum(self, name: str) -> float:
        """Sum of one metric over all its label sets."""
        return sum(self.metrics(name).get(name, {}).values())

    def metric_by(self, name: str, label: str) -> dict[str, float]:
        """{label value: sample} of one metric."""
        return label_values(self.metrics(name), name, label)

    def wait_metrics(self, timeout: float = 30.0) -> None:
        """Wait until the endpoint answers (the process has started)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"process exited early; see {self.log_path}")
            try:
                self.metrics()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def status(self) -> dict[str, int]:
        """VmRSS / VmHWM in kB."""
        return proc_status(self.pid)

    def stop(self) -> int:
        """SIGTERM, wait for the drain (SIGKILL after 30 s)."""
        return processes.stop(self.proc)


@contextmanager
def fairway_process(command: list[str], settings: Settings, label: str) -> Iterator[FairwayProcess]:
    """Run ``python -m fairway <command>`` with a metrics port; log to ``out/logs/<label>.log``."""
    LOGS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = LOGS / f"{label}.log"
    log_path.unlink(missing_ok=True)
    child_settings = Settings.from_env({}, **{**_fields(settings), "metrics_port": port})
    proc = processes.start(command, child_settings, log_path)
    fp = FairwayProcess(proc, port, log_path)
    try:
        yield fp
    finally:
        fp.stop()


def python_module(module: str, args: list[str], label: str) -> subprocess.Popen[bytes]:
    """Run ``python -m <module> args`` from the project root (a baseline contender)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{label}.log", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
    )


def poll_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Call ``predicate`` until truthy; raise TimeoutError after ``timeout`` s."""
    return wait_for(predicate, timeout, what, interval)
