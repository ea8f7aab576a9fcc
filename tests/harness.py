"""Test harness: an isolated Fairway pipeline on the real services.

Each :class:`Pipeline` gets its own RabbitMQ vhost and its own database, so tests
never see each other's messages. Relay and scheduler run as real child processes
(``python -m fairway relay|scheduler``), so tests can SIGTERM or SIGKILL them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import pika
from pymongo.database import Database

from fairway.amqp import management as rabbitmq_api
from fairway.devtools import processes
from fairway.devtools.processes import free_port, wait_for
from fairway.kernel import topology
from fairway.kernel.settings import Settings
from fairway.provision import provision_tenant
from fairway.storage import mongo, registry

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services.sh"
MGMT_URL = os.environ.get("FAIRWAY_RABBITMQ_MGMT_URL", rabbitmq_api.DEFAULT_URL)


def scrape_metric(port: int, name: str, **labels: str) -> float:
    """A sample from the Prometheus endpoint on ``port`` (0 if absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    key = f"{name}{{{want}}}" if want else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def management(method: str, path: str, body: dict | None = None) -> Any:
    """Call the RabbitMQ management HTTP API (``path`` below ``/api/``)."""
    return rabbitmq_api.call(MGMT_URL, method, path, body)


def services(command: str) -> None:
    """Run ``scripts/services.sh <command>`` (e.g. stop-mongo) and require success."""
    subprocess.run([str(SERVICES), command], check=True, cwd=ROOT, timeout=300)


class Pipeline:
    """One isolated vhost + database, and the Fairway processes running on them."""

    def __init__(self, base: Settings, workdir: Path, **overrides: Any) -> None:
        self.name = f"t-{uuid.uuid4().hex[:10]}"
        amqp = urllib.parse.urlsplit(base.amqp_url)
        mongo = urllib.parse.urlsplit(base.mongo_url)
        self.settings = Settings.from_env(
            base.environ(),
            **{
                "amqp_url": urllib.parse.urlunsplit(amqp._replace(path="/" + self.name)),
                "mongo_url": urllib.parse.urlunsplit(mongo._replace(path="/" + self.name)),
                "tenant_refresh_s": 0.5,
                "device_cache_ttl_s": 1.0,
                "secret_key": base.secret_key or "fairway-test-secret-key-0123456789",
                **overrides,
            },
        )
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: dict[str, int] = {}
        self._db: Database | None = None

    # -- lifecycle ---------------------------------------------------------------
    def create(self) -> Pipeline:
        """Create the vhost (guest gets full rights) and declare the topology."""
        rabbitmq_api.create_vhost(MGMT_URL, self.name)
        with self.channel() as channel:
            topology.declare(channel, self.settings)
        mongo.ensure_indexes(self.db)
        return self

    def destroy(self) -> None:
        """Stop every process, delete the vhost and drop the database."""
        for name in list(self.procs):
            self.stop(name)
        with suppress(Exception):
            rabbitmq_api.delete_vhost(MGMT_URL, self.name)
        if self._db is not None:
            self._db.client.drop_database(self.name)
            self._db.client.close()

    @property
    def db(self) -> Database:
        """This pipeline's database."""
        if self._db is None:
            self._db = mongo.connect(self.settings)
        return self._db

    @contextmanager
    def channel(self, username: str = "guest", password: str = "guest") -> Iterator[Any]:
        """A blocking channel on this vhost (optionally as another broker user)."""
        params = pika.URLParameters(self.settings.amqp_url)
        params.credentials = pika.PlainCredentials(username, password)
        connection = pika.BlockingConnection(params)
        try:
            yield connection.channel()
        finally:
            if connection.is_open:
                connection.close()

    # -- processes ---------------------------------------------------------------
    def start(self, role: str, *args: str, **overrides: Any) -> subprocess.Popen[bytes]:
        """Start ``fairway <role>`` (relay, scheduler) as a child process."""
        port = free_port()
        settings = Settings.from_env(self.settings.environ(), metrics_port=port, **overrides)
        proc = processes.start([role, *args], settings, self.workdir / f"{role}.log")
        self.procs[role] = proc
        self.metrics_ports[role] = port
        ready = {"web": settings.web_port, "gateway": settings.gateway_port}.get(role, port)
        wait_for(lambda: self._answers(ready) or proc.poll() is not None, 30, f"{role} to start")
        assert proc.poll() is None, f"{role} exited with {proc.returncode} at start"
        return proc

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, role: str) -> int:
        """SIGTERM and wait; return the exit code."""
        return processes.stop(self.procs.pop(role))

    def kill(self, role: str) -> None:
        """SIGKILL: crash at an arbitrary point."""
        processes.kill(self.procs.pop(role))

    def alive(self, role: str) -> bool:
        """True while the process runs."""
        return self.procs[role].poll() is None

    def metric(self, role: str, name: str, **labels: str) -> float:
        """Current value of a Prometheus sample of a running process (0 if absent)."""
        return scrape_metric(self.metrics_ports[role], name, **labels)

    # -- provisioning and traffic --------------------------------------------------
    def tenant(self, tenant_id: str, weight: int = 1, max_backlog: int | None = None) -> None:
        """Provision a tenant and its queue."""
        provision_tenant(
            self.settings, tenant_id, weight, max_backlog or self.settings.tenant_max_backlog
        )

    def device(self, tenant_id: str, device_id: str) -> dict[str, str]:
        """Register a device; returns its credentials."""
        return registry.register_device(self.db, tenant_id, device_id)

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
        out = []
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

    def stored(self, **query: Any) -> int:
        """Number of telemetry documents matching ``query``."""
        return self.db[mongo.TELEMETRY].count_documents(query)

    def wait_stored(self, count: int, timeout: float = 60.0, **query: Any) -> None:
        """Wait until exactly ``count`` matching documents are stored (fail if more)."""
        wait_for(lambda: self.stored(**query) >= count, timeout, f"{count} stored {query}")
        assert self.stored(**query) == count


def reading(ts: float | None = None, **values: Any) -> dict[str, Any]:
    """A valid reading body."""
    return {"ts": time.time() if ts is None else ts, "values": values or {"temp": 21.5}}
