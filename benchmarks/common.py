"""Shared helpers of the benchmarks: output, statistics, queue filling.

Every benchmark run gets a fresh RabbitMQ vhost and a fresh database, so runs never
see each other's messages and leave nothing behind: :func:`bench_env` is the tests'
:class:`tests.harness.Pipeline`, and Fairway processes are the harness's
:class:`tests.harness.FairwayProcess`. Broker and database locations come from the
environment:

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
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika

from fairway.devtools.processes import wait_for
from fairway.kernel import batch_document, topology
from fairway.kernel.contract import Reading, bundle_body, bundle_head, bundle_part
from fairway.kernel.settings import Settings
from fairway.storage import mongo
from tests import harness
from tests.harness import LocalNode, Pipeline, running

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


def require_postgres_url(needed_for: str) -> str:
    """``FAIRWAY_POSTGRES_URL``, which private FerretDBs run on; exits saying what needs it."""
    url = os.environ.get("FAIRWAY_POSTGRES_URL", "")
    if not url:
        raise SystemExit(f"FAIRWAY_POSTGRES_URL is needed ({needed_for})")
    return url


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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far, from ``/proc`` (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


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


def paired_ratios(rounds: list[dict[str, Any]], a: str, b: str, key: str = "rate") -> list[float]:
    """Per round, ``a``'s rate (or ``key``) over ``b``'s (contenders of a round ran back
    to back)."""
    return [round(rd[a][key] / rd[b][key], 3) for rd in rounds if rd[b][key]]


def median_ratio(rounds: list[dict[str, Any]], a: str, b: str, key: str = "rate") -> float | None:
    """Median of :func:`paired_ratios`: robust to the machine's load drifting between
    rounds, which a ratio of medians is not."""
    values = paired_ratios(rounds, a, b, key)
    return round(statistics.median(values), 3) if values else None


def r(value: float, digits: int = 1) -> float:
    """Round for the JSON output."""
    return round(value, digits)


# -- the run's isolated vhost and database (the tests' harness) ------------------------
BASE = Settings.from_env(amqp_url=AMQP_BASE, mongo_url=MONGO_BASE)


@contextmanager
def bench_env(prefix: str, **overrides: Any) -> Iterator[Pipeline]:
    """Fresh vhost and database, Fairway's shared topology declared, indexes created."""
    LOGS.mkdir(parents=True, exist_ok=True)
    # Heartbeat-free channels: benchmark helpers may sit idle while something else runs.
    with Pipeline(
        BASE, LOGS, prefix=prefix, mgmt_url=MGMT_URL, channel_heartbeat=0, **overrides
    ) as env:
        yield env


PRIVATE_NODE: LocalNode | None = None  # set by use_private_broker


def use_private_broker(stack: ExitStack, auth_url: str | None = None) -> LocalNode:
    """Point the run at a RabbitMQ node of its own (:class:`tests.harness.LocalNode`,
    stopped with ``stack``): ``AMQP_BASE``, ``MGMT_URL``, ``BASE`` and the harness's
    management URL, so its queues never land on the shared broker and ``beam.smp``'s CPU is
    the run's alone. ``auth_url``: where its HTTP auth backend asks about device logins
    (default: scripts/services.sh's, the broker-auth port 8082 of ``fairway web``)."""
    node = LocalNode(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "rabbitmq")
    if auth_url is not None:
        node.env["FAIRWAY_BROKER_AUTH_URL"] = auth_url
    stack.enter_context(node)
    global AMQP_BASE, MGMT_URL, BASE
    AMQP_BASE, MGMT_URL = node.amqp_url(""), node.mgmt_url
    # Its processes (the relay closes quarantined devices' connections) ask this node too.
    BASE = Settings.from_env(BASE.environ(), amqp_url=AMQP_BASE, rabbitmq_mgmt_url=MGMT_URL)
    harness.MGMT_URL = node.mgmt_url
    global PRIVATE_NODE
    PRIVATE_NODE = node
    say(f"private RabbitMQ node at {AMQP_BASE}")
    return node


# -- AMQP helpers --------------------------------------------------------------------
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
    items: Iterable[tuple[str, str, bytes] | tuple[str, str, bytes, pika.BasicProperties]],
    properties: pika.BasicProperties | None = None,
) -> int:
    """Publish (exchange, routing key, body[, properties]) items without confirms; return
    the count. An item's own properties (a bundle's header) win over ``properties``.

    Used to pre-fill queues: callers check the queue depths afterwards
    (:func:`wait_ready`), which is cheaper than a confirm round trip per message.
    Publishes go through the blocking channel's underlying asynchronous channel and
    the socket is flushed every 500 messages: about 2.5x the rate of
    ``BlockingChannel.basic_publish``, which flushes after every message.
    """
    props = properties or pika.BasicProperties(delivery_mode=2, content_type="application/json")
    impl = ch._impl
    n = 0
    for item in items:
        impl.basic_publish(item[0], item[1], item[2], item[3] if len(item) > 3 else props)
        n += 1
        if n % 500 == 0:
            ch.connection.process_data_events(0)
    ch.connection.process_data_events(0)
    return n


# -- the relay's tenant-queue format ---------------------------------------------------
def bundle(tenant: str, readings: Sequence[Reading], received: float) -> bytes:
    """A tenant-queue message as the relay publishes it today: one bundle of ``readings``
    (built by the pipeline's own :mod:`fairway.kernel.contract` functions)."""
    return bundle_body(bundle_head(tenant), [bundle_part(x, received) for x in readings])


def bundle_props(readings: int) -> pika.BasicProperties:
    """The relay's properties of a bundle: persistent, JSON, ``x-fairway-readings``."""
    return pika.BasicProperties(
        delivery_mode=2,
        content_type="application/json",
        headers={topology.READINGS_HEADER: readings},
    )


def relay_bundles(arrivals: Iterable[str], max_readings: int) -> list[tuple[str, int]]:
    """(tenant, readings) of the bundles a relay publishes for readings arriving in
    ``arrivals`` order (one tenant id per reading) faster than its linger: one open
    bundle per tenant, published when it holds ``max_readings``, the rest at the end
    (:class:`ingest.bundler.Bundler`'s count and drain causes), in publish order."""
    held: dict[str, int] = {}
    out: list[tuple[str, int]] = []
    for tenant in arrivals:
        held[tenant] = held.get(tenant, 0) + 1
        if held[tenant] >= max_readings:
            out.append((tenant, held.pop(tenant)))
    out.extend(held.items())
    return out


# -- processes -----------------------------------------------------------------------
def fairway_process(command: list[str], settings: Settings, label: str) -> Any:
    """``python -m fairway <command>`` for a ``with`` block, logging to ``out/logs/<label>.log``."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{label}.log"
    log_path.unlink(missing_ok=True)
    return running(command, settings, log_path)


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


def stored_tally(db: Any, exclude: Iterable[str] = ()) -> dict[str, int]:
    """Documents, readings and duplicate readings in ``telemetry``, in both layouts (a
    device batch's readings are one document per batch and hour): one full scan, to run
    after the timing, never during it. Readings whose ids are in ``exclude`` (a warm-up's)
    are left out, and so are documents holding only such readings."""
    left_out = set(exclude)
    fields = {"_id": 1, **dict.fromkeys(batch_document.BATCH_FIELDS, 1)}
    seen: set[str] = set()
    documents = readings = duplicates = 0
    for doc in db[mongo.TELEMETRY].find({}, fields):
        counted = [d["_id"] for d in batch_document.readings(doc) if d["_id"] not in left_out]
        documents += bool(counted)
        readings += len(counted)
        for reading_id in counted:
            if reading_id in seen:
                duplicates += 1
            seen.add(reading_id)
    return {"documents": documents, "readings": readings, "duplicate_readings": duplicates}


def poll_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Call ``predicate`` until truthy; raise TimeoutError after ``timeout`` s."""
    return wait_for(predicate, timeout, what, interval)
