"""An isolated Fairway pipeline on the real services, shared by the tests and the benchmarks.

Each :class:`Pipeline` gets its own RabbitMQ vhost and its own database, so runs
never see each other's messages and leave nothing behind. Fairway processes run as
real children (``python -m fairway relay|scheduler|...``, :class:`FairwayProcess`),
so callers can scrape their metrics and SIGTERM or SIGKILL them.

This module does not import pytest: ``benchmarks/`` uses it as it is.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import pika
import yaml
from pika.adapters.blocking_connection import BlockingChannel
from pymongo import MongoClient
from pymongo.database import Database

from fairway.amqp import management as rabbitmq_api
from fairway.amqp.connection import blocking_channel
from fairway.devtools import processes
from fairway.devtools.processes import free_port, wait_for
from fairway.kernel import batch_document, topology
from fairway.kernel.contract import tenant_id_range
from fairway.kernel.settings import Settings
from fairway.provision import bind_devices, provision_tenant
from fairway.storage import mongo, registry

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services.sh"
MGMT_URL = os.environ.get("FAIRWAY_RABBITMQ_MGMT_URL", rabbitmq_api.DEFAULT_URL)


# -- the services ------------------------------------------------------------------------
def management(method: str, path: str, body: dict | None = None) -> Any:
    """Call the RabbitMQ management HTTP API (``path`` below ``/api/``)."""
    return rabbitmq_api.call(MGMT_URL, method, path, body)


def services(command: str) -> None:
    """Run ``scripts/services.sh <command>`` (e.g. stop-mongo) and require success."""
    subprocess.run([str(SERVICES), command], check=True, cwd=ROOT, timeout=300)


# -- a local three-node RabbitMQ cluster ---------------------------------------------------
def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    """Three clustered RabbitMQ nodes started by ``scripts/services.sh cluster``.

    Its own services directory, node names and ports (a free base below the ephemeral
    range), so it meets neither the shared single node nor another run's cluster. Node
    ``n`` (1..3): AMQP ``base + n``, management ``base + 10000 + n``. Use as a context
    manager: ``cluster down`` at exit.
    """

    SIZE = 3

    def __init__(
        self,
        state: Path,
        base: int | None = None,
        netns_node: int | None = None,
        net_ticktime: int | None = None,
    ) -> None:
        """``netns_node``: that node runs in a network namespace of its own, so that
        :meth:`cut` can partition it; ``net_ticktime``: the nodes' (Erlang's 60 s if None)."""
        self.base = base or self._free_base()
        self.prefix = f"fwc{self.base}-"
        self.netns_node = netns_node
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRWAY_")}
        self.env.update(
            FAIRWAY_SERVICES_DIR=str(state),
            FAIRWAY_CLUSTER_PORT_BASE=str(self.base),
            FAIRWAY_CLUSTER_NODE_PREFIX=self.prefix,
        )
        if netns_node is not None:
            self.env["FAIRWAY_CLUSTER_NETNS_NODE"] = str(netns_node)
        if net_ticktime is not None:
            self.env["FAIRWAY_CLUSTER_NET_TICKTIME"] = str(net_ticktime)

    @classmethod
    def _free_base(cls) -> int:
        for _ in range(200):
            base = random.randrange(10_000, 12_000, 10)
            ports = [
                base + offset + n
                for offset in (0, 100, 10_000, 10_100, 20_000)
                for n in range(1, cls.SIZE + 1)
            ]
            if all(_free(p) for p in ports):
                return base
        raise AssertionError("no free ports for a local cluster")

    def services(self, *command: str) -> float:
        """``scripts/services.sh cluster <command>``; its duration in seconds."""
        started = time.monotonic()
        result = subprocess.run(
            [str(SERVICES), "cluster", *command],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"cluster {command}:\n{result.stdout}{result.stderr}"
        return time.monotonic() - started

    def __enter__(self) -> LocalCluster:
        try:
            self.services("up")
        except BaseException:
            self.__exit__()  # whatever part of it started
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        # Its data is thrown away with its directory: no clean shutdown needed (~25 s).
        failures = []
        for n in range(1, self.SIZE + 1):
            try:
                self.kill(n)
            except AssertionError as exc:  # the other nodes still go
                failures.append(str(exc))
        if self.netns_node is not None:
            try:
                self.services("down")  # the nodes are gone: only the namespace and forwarders
            except AssertionError as exc:
                failures.append(str(exc))
        assert not failures, "\n".join(failures)

    def kill(self, n: int) -> None:
        """SIGKILL node ``n``'s Erlang VM."""
        self.services("kill", str(n))

    def stop(self, n: int) -> None:
        """Stop node ``n`` cleanly (``rabbitmqctl shutdown``)."""
        self.services("stop", str(n))

    def start(self, n: int) -> None:
        """Start node ``n`` again and wait until it serves."""
        self.services("start", str(n))

    def cut(self, n: int) -> None:
        """Partition node ``n`` (the ``netns_node``) from the others: its Erlang
        distribution link goes down, silently; clients still reach it."""
        self.services("cut", str(n))

    def heal(self, n: int) -> None:
        """Bring node ``n``'s distribution link back."""
        self.services("heal", str(n))

    def node(self, n: int) -> str:
        """Node ``n``'s Erlang node name."""
        return f"{self.prefix}{n}@localhost"

    def index(self, node: str) -> int:
        """The number of the node named ``node``."""
        return next(n for n in range(1, self.SIZE + 1) if self.node(n) == node)

    def amqp_port(self, n: int) -> int:
        """Node ``n``'s AMQP port."""
        return self.base + n

    def amqp_url(self, first: int = 1, vhost: str = "%2F") -> str:
        """Every node's AMQP URL, comma-separated, from node ``first`` on (wrapping)."""
        order = [(first - 1 + i) % self.SIZE + 1 for i in range(self.SIZE)]
        return ",".join(f"amqp://guest:guest@127.0.0.1:{self.amqp_port(n)}/{vhost}" for n in order)

    @property
    def mgmt_url(self) -> str:
        """Every node's management API, comma-separated."""
        return ",".join(
            f"http://guest:guest@127.0.0.1:{self.base + 10_000 + n}"
            for n in range(1, self.SIZE + 1)
        )

    def pids(self) -> list[int]:
        """The nodes' Erlang VMs (those running)."""
        run = Path(self.env["FAIRWAY_SERVICES_DIR"]) / "run"
        found = [run / f"cluster-n{n}.pid" for n in range(1, self.SIZE + 1)]
        return [int(p.read_text().strip()) for p in found if p.exists()]

    def running(self) -> list[str]:
        """The nodes the management API lists as running."""
        nodes = rabbitmq_api.call(self.mgmt_url, "GET", "nodes?columns=name,running")
        return sorted(n["name"] for n in nodes if n.get("running"))


class LocalNode:
    """A single RabbitMQ node of its own (``scripts/services.sh start-rabbitmq`` with its
    own services directory, node name and ports: AMQP ``base``, management ``base + 1``,
    MQTT ``base + 2``, Prometheus ``base + 3``), the single-node twin of
    :class:`LocalCluster` for side-by-side measurements."""

    def __init__(self, state: Path) -> None:
        self.state = state
        for _ in range(200):
            self.base = random.randrange(12_000, 13_000, 10)
            if all(_free(p) for p in [*range(self.base, self.base + 4), self.base + 20_000]):
                break
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRWAY_")}
        self.env.update(
            FAIRWAY_SERVICES_DIR=str(state),
            FAIRWAY_RABBITMQ_NODE=f"fwn{self.base}@localhost",
            FAIRWAY_RABBITMQ_PORT=str(self.base),
            FAIRWAY_RABBITMQ_MGMT_PORT=str(self.base + 1),
            FAIRWAY_RABBITMQ_MQTT_PORT=str(self.base + 2),
            FAIRWAY_RABBITMQ_PROMETHEUS_PORT=str(self.base + 3),
            FAIRWAY_AMQP_URL=self.amqp_url(),
        )

    def _services(self, command: str) -> None:
        result = subprocess.run(
            [str(SERVICES), command],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"

    def __enter__(self) -> LocalNode:
        self._services("start-rabbitmq")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._services("stop-rabbitmq")

    def amqp_url(self, vhost: str = "%2F") -> str:
        """The node's AMQP URL."""
        return f"amqp://guest:guest@127.0.0.1:{self.base}/{vhost}"

    @property
    def mgmt_url(self) -> str:
        """The node's management API."""
        return f"http://guest:guest@127.0.0.1:{self.base + 1}"

    def pids(self) -> list[int]:
        """The node's Erlang VM."""
        return [int((self.state / "run" / "rabbitmq.pid").read_text().strip())]


def quorum_policies() -> list[dict[str, Any]]:
    """The policies the Ansible role puts on a cluster's vhost (``rabbitmq_quorum_policies``),
    so tests on the local cluster run what production runs."""
    defaults = ROOT / "ansible" / "roles" / "rabbitmq" / "defaults" / "main.yml"
    policies: list[dict[str, Any]] = yaml.safe_load(defaults.read_text())[
        "rabbitmq_quorum_policies"
    ]
    return policies


def apply_policies(mgmt_url: str, vhost: str, policies: list[dict[str, Any]]) -> None:
    """Set ``policies`` (Ansible's shape: name, pattern, apply-to, priority, definition)."""
    quoted = urllib.parse.quote(vhost, safe="")
    for policy in policies:
        body = {k: policy[k] for k in ("pattern", "apply-to", "priority", "definition")}
        name = urllib.parse.quote(policy["name"], safe="")
        rabbitmq_api.call(mgmt_url, "PUT", f"policies/{quoted}/{name}", body)


# -- Prometheus metrics ------------------------------------------------------------------
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


def _labels(text: str) -> dict[str, str]:
    pairs = (part.partition("=") for part in text.split(",") if part)
    return {k: v.strip('"') for k, _, v in pairs}


def label_values(samples: dict[str, dict[str, float]], name: str, label: str) -> dict[str, float]:
    """{value of ``label``: sample} for one metric."""
    out: dict[str, float] = {}
    for labels, value in samples.get(name, {}).items():
        if label in (parsed := _labels(labels)):
            out[parsed[label]] = value
    return out


def scrape(port: int, *names: str) -> dict[str, dict[str, float]]:
    """The samples on the Prometheus endpoint on ``port`` (only ``names`` if given: cheaper)."""
    query = "?" + "&".join(f"name[]={n}" for n in names) if names else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}", timeout=10) as r:
        return parse_metrics(r.read().decode())


def scrape_metric(port: int, name: str, **labels: str) -> float:
    """One sample from the Prometheus endpoint on ``port`` (0 if absent)."""
    for text, value in scrape(port, name).get(name, {}).items():
        if _labels(text) == labels:
            return value
    return 0.0


# -- processes ---------------------------------------------------------------------------
# Rows per INSERT statement, as scripts/services.sh launches FerretDB (FERRETDB_INSERT_BATCH).
FERRETDB_INSERT_BATCH = 1000
# The Go collector's settings scripts/services.sh gives FerretDB (FERRETDB_GOGC, _GOMEMLIMIT).
FERRETDB_GO_ENV = {"GOGC": "400", "GOMEMLIMIT": "1GiB"}


def ferretdb_binary() -> Path:
    """The FerretDB binary ``scripts/services.sh`` built (may not exist where it runs mongod)."""
    services = Path(os.environ.get("FAIRWAY_SERVICES_DIR", ROOT / ".services"))
    return services / "bin" / "ferretdb"


def pings(url: str) -> bool:
    """True if a MongoDB-compatible server answers ``ping`` at ``url`` within half a second."""
    client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=500)
    with suppress(Exception), client:
        client.admin.command("ping")
        return True
    return False


@contextmanager
def private_ferretdb(
    state: Path, backend: list[str], go_env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A FerretDB of one's own on a free port, state and log in ``state``: yields its base
    URL (``mongodb://127.0.0.1:<port>/``) and process. ``backend``: its ``--handler`` and
    backend URL arguments, e.g. ``["--handler=sqlite", f"--sqlite-url=file:{data}/"]``;
    ``go_env``: its Go runtime settings (default :data:`FERRETDB_GO_ENV`, as services.sh)."""
    binary = ferretdb_binary()
    assert binary.exists(), f"{binary} is missing: run scripts/services.sh up (make test does)"
    port = free_port()
    with open(state / "ferretdb.log", "wb") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                *backend,
                f"--state-dir={state}",
                f"--listen-addr=127.0.0.1:{port}",
                "--debug-addr=-",
                "--telemetry=disable",
                f"--test-batch-size={FERRETDB_INSERT_BATCH}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(FERRETDB_GO_ENV if go_env is None else go_env)},
        )
    url = f"mongodb://127.0.0.1:{port}/"
    try:
        wait_for(lambda: pings(url) or proc.poll() is not None, 30, "a private FerretDB")
        assert proc.poll() is None, (state / "ferretdb.log").read_text()
        yield url, proc
    finally:
        proc.terminate()
        with suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sqlite_ferretdb(state: Path) -> Any:
    """:func:`private_ferretdb` on SQLite files in ``state/data``."""
    (state / "data").mkdir(exist_ok=True)
    return private_ferretdb(state, ["--handler=sqlite", f"--sqlite-url=file:{state}/data/"])


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a process, in kB."""
    out: dict[str, int] = {}
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


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

    def wait_ready(self, port: int | None = None, timeout: float = 30.0) -> None:
        """Wait until ``port`` (default: the metrics endpoint) answers; fail if it exits."""
        port = port or self.metrics_port
        wait_for(
            lambda: _answers(port) or not self.alive(), timeout, f"{self.log_path.stem} to start"
        )
        if not self.alive():
            raise RuntimeError(
                f"{self.log_path.stem} exited with {self.proc.returncode} at start; "
                f"see {self.log_path}"
            )

    def metrics(self, *names: str) -> dict[str, dict[str, float]]:
        """Scrape its Prometheus endpoint (only ``names`` if given: much cheaper)."""
        return scrape(self.metrics_port, *names)

    def metric(self, name: str, **labels: str) -> float:
        """One sample (0 if absent)."""
        return scrape_metric(self.metrics_port, name, **labels)

    def metric_sum(self, name: str) -> float:
        """Sum of one metric over all its label sets."""
        return sum(self.metrics(name).get(name, {}).values())

    def metric_by(self, name: str, label: str) -> dict[str, float]:
        """{label value: sample} of one metric."""
        return label_values(self.metrics(name), name, label)

    def status(self) -> dict[str, int]:
        """VmRSS / VmHWM in kB."""
        return proc_status(self.pid)

    def stop(self) -> int:
        """SIGTERM, wait for the drain (SIGKILL after 30 s); return the exit code."""
        return processes.stop(self.proc)

    def kill(self) -> None:
        """SIGKILL: a crash at an arbitrary point."""
        processes.kill(self.proc)


def _env_port(name: str) -> int:
    """A port setting as this environment sets it (the shared services were set up with
    these), else its default."""
    raw = os.environ.get(f"FAIRWAY_{name.upper()}", "")
    default: int = next(f.default for f in dataclasses.fields(Settings) if f.name == name)
    return int(raw) if raw.strip() else default


def broker_auth_port_for(settings: Settings) -> int:
    """The broker-auth port a ``fairway web`` on ``settings`` gets in the tests.

    The shared broker's auth URLs name ONE port, the environment's
    ``FAIRWAY_BROKER_AUTH_PORT`` (8082; scripts/services.sh): the web app on the
    environment's web port (8080, run under its lock) serves it and so answers the shared
    broker's device logins. A web app on any other port gets a free auth port as well, so
    two test runs never contend for it and only the locked one answers the shared broker.
    A port a test chose itself is kept.
    """
    shared = _env_port("broker_auth_port")
    if (
        shared
        and settings.broker_auth_port == shared
        and settings.web_port != _env_port("web_port")
    ):
        return free_port()
    return settings.broker_auth_port


def start_process(command: list[str], settings: Settings, log_path: Path) -> FairwayProcess:
    """Start ``python -m fairway <command>`` with its own metrics port; do not wait.
    ``web``: its broker-auth port as :func:`broker_auth_port_for` says."""
    port = free_port()
    extra = {"broker_auth_port": broker_auth_port_for(settings)} if command[:1] == ["web"] else {}
    child = Settings.from_env(settings.environ(), metrics_port=port, **extra)
    return FairwayProcess(processes.start(command, child, log_path), port, log_path)


@contextmanager
def running(command: list[str], settings: Settings, log_path: Path) -> Iterator[FairwayProcess]:
    """:func:`start_process` for the length of a ``with`` block; stopped after it."""
    child = start_process(command, settings, log_path)
    try:
        yield child
    finally:
        child.stop()


# -- the isolated pipeline ---------------------------------------------------------------
def _each(url: str, change: Any) -> str:
    """Apply ``change`` (a ``SplitResult`` -> ``SplitResult``) to each URL of a
    comma-separated broker list."""
    return ",".join(
        urllib.parse.urlunsplit(change(urllib.parse.urlsplit(u.strip()))) for u in url.split(",")
    )


def _replace_path(url: str, path: str) -> str:
    return _each(url, lambda parts: parts._replace(path="/" + path))


class Pipeline:
    """One isolated vhost + database, and the Fairway processes running on them.

    ``channel_heartbeat`` applies to this object's own blocking channels only (0: none,
    for callers that hold a channel idle while something else runs).
    """

    def __init__(
        self,
        base: Settings,
        workdir: Path,
        prefix: str = "t",
        mgmt_url: str = MGMT_URL,
        channel_heartbeat: int | None = None,
        **overrides: Any,
    ) -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.settings = Settings.from_env(
            base.environ(),
            amqp_url=_replace_path(base.amqp_url, self.name),
            mongo_url=_replace_path(base.mongo_url, self.name),
            **overrides,
        )
        self.workdir = workdir
        self.mgmt_url = mgmt_url
        self.channel_heartbeat = channel_heartbeat
        self.procs: dict[str, FairwayProcess] = {}
        self._db: Database | None = None

    # -- lifecycle ---------------------------------------------------------------
    def create(self) -> Pipeline:
        """Create the vhost (guest gets full rights), declare the topology, index the db."""
        rabbitmq_api.create_vhost(self.mgmt_url, self.name)
        with self.channel() as channel:
            topology.declare(channel, self.settings)
        mongo.ensure_indexes(self.db)
        return self

    def destroy(self) -> None:
        """Stop every process, delete the vhost and drop the database."""
        for name in list(self.procs):
            self.stop(name)
        with suppress(Exception):
            rabbitmq_api.delete_vhost(self.mgmt_url, self.name)
        if self._db is not None:
            self._db.client.drop_database(self.name)
            self._db.client.close()

    def __enter__(self) -> Pipeline:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def with_(self, **overrides: Any) -> Settings:
        """This pipeline's settings with some fields changed."""
        return Settings.from_env(self.settings.environ(), **overrides)

    @property
    def db(self) -> Database:
        """This pipeline's database (one client, opened on first use)."""
        if self._db is None:
            self._db = mongo.connect(self.settings)
        return self._db

    @contextmanager
    def channel(
        self, username: str = "guest", password: str = "guest"
    ) -> Iterator[BlockingChannel]:
        """A blocking channel on this vhost (optionally as another broker user)."""
        user = urllib.parse.quote(username, safe="") + ":" + urllib.parse.quote(password, safe="")

        def as_user(parts: urllib.parse.SplitResult) -> urllib.parse.SplitResult:
            query = parts.query
            if self.channel_heartbeat is not None:
                query = "&".join(filter(None, [query, f"heartbeat={self.channel_heartbeat}"]))
            return parts._replace(netloc=f"{user}@{parts.netloc.rpartition('@')[2]}", query=query)

        url = _each(self.settings.amqp_url, as_user)
        with blocking_channel(self.with_(amqp_url=url), f"harness-{username}") as channel:
            yield channel

    # -- processes ---------------------------------------------------------------
    def start(
        self, role: str, *args: str, name: str | None = None, **overrides: Any
    ) -> FairwayProcess:
        """Start ``fairway <role>`` as a child process and wait until it answers.

        ``name`` (default: the role) keys it in :attr:`procs` and names its log, for
        several processes of one role.
        """
        settings = self.with_(**overrides)
        name = name or role
        child = start_process([role, *args], settings, self.workdir / f"{name}.log")
        self.procs[name] = child
        ready = {"web": settings.web_port, "gateway": settings.gateway_port}.get(role)
        child.wait_ready(ready)
        return child

    def stop(self, role: str) -> int:
        """SIGTERM and wait; return the exit code."""
        return self.procs.pop(role).stop()

    def kill(self, role: str) -> None:
        """SIGKILL: crash at an arbitrary point."""
        self.procs.pop(role).kill()

    def alive(self, role: str) -> bool:
        """True while the process runs."""
        return self.procs[role].alive()

    def metric(self, role: str, name: str, **labels: str) -> float:
        """Current value of a Prometheus sample of a running process (0 if absent)."""
        return self.procs[role].metric(name, **labels)

    # -- provisioning and traffic --------------------------------------------------
    def tenant(self, tenant_id: str, weight: int = 1, max_backlog: int | None = None) -> None:
        """Provision a tenant and its queue."""
        provision_tenant(
            self.settings, tenant_id, weight, max_backlog or self.settings.tenant_max_backlog
        )

    def device(self, tenant_id: str, device_id: str) -> dict[str, str]:
        """Register a device and bind it to ``ingest.<tenant>``; returns its credentials.

        The password is stored as ``fairway device register`` and the web app store theirs: a
        keyed hash under these settings' key. An argon2 hash (what a registration without
        a key writes) costs its first login ~190 ms of the web app's CPU, which a
        benchmark would otherwise charge to whatever it measures (40 flood devices
        logging in at once took ~7.6 s of CPU in a 15 s isolation phase)."""
        key = registry.device_hash_key(self.settings.device_hash_key, self.settings.secret_key)
        credentials = registry.register_device(self.db, tenant_id, device_id, key)
        bind_devices(self.settings, [(tenant_id, device_id)])
        return credentials

    def publish(
        self,
        messages: list[tuple[str, bytes | dict, dict[str, Any]]],
        username: str = "guest",
        password: str = "guest",
    ) -> None:
        """Publish (routing key, body, properties) to ``telemetry`` with confirms."""
        with self.channel(username, password) as channel:
            channel.confirm_delivery()
            for routing_key, body, props in messages:
                raw = body if isinstance(body, bytes) else orjson.dumps(body)
                channel.basic_publish(
                    topology.TELEMETRY,
                    routing_key,
                    raw,
                    pika.BasicProperties(delivery_mode=2, **props),
                )

    def rejected(self, expect: int, timeout: float = 30.0) -> list[tuple[dict, bytes]]:
        """Wait until ``rejected`` holds ``expect`` messages; return (headers, body) of each."""
        wait_for(lambda: self.depth(topology.REJECTED) >= expect, timeout, f"{expect} rejected")
        out: list[tuple[dict, bytes]] = []
        with self.channel() as channel:
            while True:
                method, props, body = channel.basic_get(topology.REJECTED, auto_ack=True)
                if method is None:
                    return out
                out.append((props.headers or {}, body))

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (passive declare)."""
        with self.channel() as channel:
            return channel.queue_declare(queue, passive=True).method.message_count

    def queue(self, name: str) -> dict[str, Any]:
        """The management API's view of one of this vhost's queues (type, stats, ...)."""
        vhost = urllib.parse.quote(self.name, safe="")
        path = f"queues/{vhost}/{urllib.parse.quote(name, safe='')}"
        return rabbitmq_api.call(self.mgmt_url, "GET", path)

    def stored(self, **query: Any) -> int:
        """Number of stored readings matching ``query`` (see :func:`reading_query`), in
        either layout (:func:`reading_count`)."""
        return reading_count(self.db, reading_query(**query))

    def wait_stored(self, count: int, timeout: float = 60.0, **query: Any) -> None:
        """Wait until exactly ``count`` matching documents are stored (fail if more)."""
        try:
            wait_for(lambda: self.stored(**query) >= count, timeout, f"{count} stored {query}")
        except TimeoutError as timeout_error:  # say how far it got
            raise TimeoutError(f"{timeout_error}: {self.stored(**query)} stored") from None
        assert self.stored(**query) == count


def reading_query(
    tenant: str | None = None, device: str | None = None, **rest: Any
) -> dict[str, Any]:
    """A ``telemetry`` filter: ``tenant`` and ``device`` match the parts of ``_id``
    (a stored reading keeps them only there), the rest the fields as given."""
    if tenant is not None:
        low, high = tenant_id_range(tenant)
        if device is not None:
            low, high = f"{low}{device}:", f"{low}{device};"
        rest["_id"] = {"$gte": low, "$lt": high}
    elif device is not None:
        rest["_id"] = {"$regex": f"^[^:]+:{re.escape(device)}:"}
    return rest


# -- stored readings, in both layouts ------------------------------------------------------
# Filter keys a batch document shares with each of its readings: matched by the database
# (and ``_id`` as a tenant or device prefix: ``_is_id_prefix``).
_SHARED_KEYS = frozenset(("hk", "stream", "received", "w"))
_COMPARE = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
    "$exists": lambda a, b: (a is not None) == bool(b),
    "$regex": lambda a, b: isinstance(a, str) and re.search(b, a) is not None,
}


def _field(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _matches(doc: dict[str, Any], condition: dict[str, Any]) -> bool:
    """Whether reading document ``doc`` matches ``condition`` (equality, or the
    comparison operators of :data:`_COMPARE`, per field)."""
    for path, want in condition.items():
        value = _field(doc, path)
        if isinstance(want, dict) and want and all(k.startswith("$") for k in want):
            if not all(_COMPARE[op](value, arg) for op, arg in want.items()):
                return False
        elif value != want:
            return False
    return True


def _split_filter(where: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``where`` as (the part the database can match on stored documents of both
    layouts, the part matched on each reading: ``ts``, ``values``, an ``_id`` equality)."""
    stored: dict[str, Any] = {}
    reading: dict[str, Any] = {}
    for key, want in where.items():
        if key.startswith("$"):
            # $or/$and would be taken for a field and match nothing: a check that cannot fail
            raise ValueError(f"stored_readings takes no top-level {key}")
        # An _id condition goes to the database only as a tenant or device prefix
        # (reading_query's forms), which a batch document's _id shares with its readings'
        # ids; any other (one id, a range or pattern inside a batch) is matched on each
        # reading, since "<batch id>§<hour>" is none of its readings' ids.
        shared = key in _SHARED_KEYS or (key == "_id" and _is_id_prefix(want))
        (stored if shared else reading)[key] = want
    return stored, reading


def _is_id_prefix(want: object) -> bool:
    """True for an ``_id`` condition of :func:`reading_query`: a tenant or device prefix."""
    if not isinstance(want, dict):
        return False
    if set(want) == {"$gte", "$lt"}:
        low, high = want["$gte"], want["$lt"]
        return (
            isinstance(low, str)
            and isinstance(high, str)
            and low[-1:] == ":"
            and (high == low[:-1] + ";")
        )
    pattern = want.get("$regex") if set(want) == {"$regex"} else None
    return isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith(":")


def stored_readings(
    db: Database, where: dict[str, Any] | None = None, projection: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The readings stored in ``telemetry`` matching ``where``, one document each whether
    stored on its own or in a device batch's document (``batch_document.each_reading``).

    ``where`` is a ``telemetry`` filter on reading fields (:func:`reading_query`'s, ``hk``,
    ``stream``, ``ts``, ``values.<name>``, an ``_id`` of one reading; equality or
    comparison operators): what a batch document shares with its readings is matched by
    the database, the rest on each reading. ``projection`` is an inclusion of reading
    fields (what it leaves out, a ``where`` on each reading cannot see)."""
    stored, per_reading = _split_filter(where or {})
    fields = projection
    if projection is not None and any(projection.values()):  # an inclusion, even of _id only
        # with what the per-reading filter reads: left out, a reading stored alone would
        # fail every comparison while a batch's reading (its r holds ts and values) passed
        read = {key.split(".")[0] for key in per_reading}
        fields = {**projection, **dict.fromkeys((*batch_document.BATCH_FIELDS, *read), 1)}
    found = batch_document.each_reading(db[mongo.TELEMETRY].find(stored, fields))
    return [doc for doc in found if _matches(doc, per_reading)]


def reading_count(db: Database, where: dict[str, Any] | None = None) -> int:
    """How many readings :func:`stored_readings` finds for ``where`` (duplicates too)."""
    stored, per_reading = _split_filter(where or {})
    if per_reading:
        return len(stored_readings(db, where))
    return sum(
        len(doc[batch_document.READINGS]) if batch_document.READINGS in doc else 1
        for doc in db[mongo.TELEMETRY].find(stored, {batch_document.READINGS: 1})
    )


def duplicate_readings(db: Database, where: dict[str, Any] | None = None) -> dict[str, int]:
    """Reading ids stored more than once (in any layout: a reading in a batch document
    and in a document of its own is stored twice), with how many times."""
    counts: dict[str, int] = {}
    for doc in stored_readings(db, where, {"_id": 1}):
        counts[doc["_id"]] = counts.get(doc["_id"], 0) + 1
    return {reading_id: n for reading_id, n in counts.items() if n > 1}


def reading(ts: float | None = None, **values: Any) -> dict[str, Any]:
    """A valid reading body."""
    return {"ts": time.time() if ts is None else ts, "values": values or {"temp": 21.5}}
