"""TLS end to end: AMQPS and MQTTS on a second RabbitMQ node with a CA made by the test.

A throwaway CA (trustme) signs a certificate for ``localhost`` only, and
``scripts/services.sh`` starts a second node for this module alone (own node name,
services dir and ports; ``FAIRWAY_RABBITMQ_TLS=1`` with ``FAIRWAY_RABBITMQ_TLS_DIR``
holding the test's files), stopped at the end. On it:

* a Fairway relay and scheduler, the push gateway and Celery connect over
  ``amqps://`` verifying the certificate, and readings published over AMQPS and
  MQTTS are stored;
* a client trusting another CA is refused, and so is one that reaches the right node
  under a name the certificate does not carry (``127.0.0.1``): the host name is checked;
* the node asks a stand-in auth backend over HTTPS (``FAIRWAY_BROKER_AUTH_URL`` https,
  ``FAIRWAY_BROKER_AUTH_CA_FILE``) and refuses device logins when that backend shows a
  certificate from another CA or for another name.

The shared services are not touched: the processes store into a private FerretDB on
SQLite (the binary ``scripts/services.sh`` built), also stopped at the end.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pika.exceptions
import pytest
import trustme
from kombu.exceptions import OperationalError

from fairway.amqp.connection import blocking_channel
from fairway.devtools.processes import free_port, wait_for
from fairway.kernel.settings import Settings
from tasks.celery_app import make_celery
from tests.harness import (
    SERVICES,
    Pipeline,
    ferretdb_binary,
    pings,
    reading,
    running,
    sqlite_ferretdb,
)
from tests.integration.conftest import TEST_SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]
HOST = "localhost"  # the only name in the test's server certificate


DEVICE_SECRET = "device-secret-0123456789"


class AuthBackend(ThreadingHTTPServer):
    """A stand-in for the web app's /broker endpoints, over HTTPS with a swappable certificate.

    Answers ``allow`` to a login with :data:`DEVICE_SECRET` (and to every vhost/resource
    check), records each user it answered, and presents whatever ``context`` holds at
    each new connection: the tests swap in certificates the broker must refuse.
    """

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.users: list[str] = []
        super().__init__(("127.0.0.1", 0), _AuthHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, address


class _AuthHandler(BaseHTTPRequestHandler):
    server: AuthBackend

    def do_POST(self) -> None:
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        allowed = True
        if self.path.endswith("/user"):
            self.server.users.append(form["username"][0])
            allowed = form.get("password", [""])[0] == DEVICE_SECRET
        body = b"allow" if allowed else b"deny"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@dataclass
class TlsNode:
    """The second node: its ports and the test's CA file (and a CA it does not use)."""

    amqp_port: int
    mgmt_port: int
    mqtt_port: int
    amqps_port: int
    mqtts_port: int
    ca_file: Path
    other_ca_file: Path
    auth: AuthBackend
    # Certificates for the auth backend: right, from another CA, for another name.
    auth_contexts: dict[str, ssl.SSLContext]

    def url(self, host: str = HOST, vhost: str = "%2F") -> str:
        return f"amqps://guest:guest@{host}:{self.amqps_port}/{vhost}"

    @property
    def mgmt_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.mgmt_port}"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> int:
    """A base port with base..base+5 free and base+20000 (the node's distribution port)."""
    for _ in range(200):
        # Below the ephemeral range, and so is the distribution port.
        base = random.randrange(10_000, 12_700, 10)
        if all(_free(p) for p in [*range(base, base + 6), base + 20_000]):
            return base
    raise AssertionError("no free ports for the TLS node")


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    state = tmp_path_factory.mktemp("tls-node")
    tls_dir = state / "tls"
    tls_dir.mkdir()
    ca = trustme.CA(organization_name="Fairway TLS test")
    server = ca.issue_cert(HOST)  # deliberately no IP address: see the host name test
    ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(tls_dir / "server.pem"))
    server.private_key_pem.write_to_path(str(tls_dir / "server-key.pem"))
    other = state / "other-ca.pem"
    other_ca = trustme.CA()
    other_ca.cert_pem.write_to_path(str(other))
    contexts = {
        "right": _server_context(ca.issue_cert(HOST)),
        "other-ca": _server_context(other_ca.issue_cert(HOST)),
        "other-name": _server_context(ca.issue_cert("elsewhere.test")),
    }
    auth = AuthBackend(contexts["right"])
    threading.Thread(target=auth.serve_forever, daemon=True).start()

    base = _ports()
    node = TlsNode(
        base, base + 1, base + 2, base + 4, base + 5, tls_dir / "ca.pem", other, auth, contexts
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRWAY_")}
    env.update(
        FAIRWAY_SERVICES_DIR=str(state / "services"),
        FAIRWAY_RABBITMQ_NODE=f"fairway-tls-{base}@localhost",
        FAIRWAY_RABBITMQ_PORT=str(base),
        FAIRWAY_RABBITMQ_MGMT_PORT=str(node.mgmt_port),
        FAIRWAY_RABBITMQ_MQTT_PORT=str(node.mqtt_port),
        FAIRWAY_RABBITMQ_PROMETHEUS_PORT=str(base + 3),
        FAIRWAY_RABBITMQ_AMQPS_PORT=str(node.amqps_port),
        FAIRWAY_RABBITMQ_MQTTS_PORT=str(node.mqtts_port),
        FAIRWAY_RABBITMQ_TLS="1",
        FAIRWAY_RABBITMQ_TLS_DIR=str(tls_dir),
        FAIRWAY_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{base}/%2F",
        FAIRWAY_BROKER_AUTH_URL=f"https://{HOST}:{auth.server_address[1]}/broker",
        FAIRWAY_BROKER_AUTH_CA_FILE=str(tls_dir / "ca.pem"),
    )

    def services(command: str) -> None:
        result = subprocess.run(
            [str(SERVICES), command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, f"services.sh {command}:\n{result.stdout}{result.stderr}"

    try:
        services("start-rabbitmq")
        conf = (state / "services" / "rabbitmq" / "rabbitmq.conf").read_text()
        assert f"ssl_options.certfile = {tls_dir}/server.pem" in conf  # ours, not generated
        yield node
    finally:
        services("stop-rabbitmq")
        auth.shutdown()


@pytest.fixture(scope="module")
def private_db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private FerretDB on SQLite (the binary scripts/services.sh built): this module
    needs a database but should not wait on the shared one, nor leave anything there.
    Where services.sh uses a real mongod (no FerretDB built), the services' database."""
    if not ferretdb_binary().exists():
        url = Settings.from_env().mongo_url
        assert pings(url), f"no FerretDB binary and no database at {url}: run services.sh up"
        yield url
        return
    with sqlite_ferretdb(tmp_path_factory.mktemp("tls-ferretdb")) as (url, _proc):
        yield url + "fairway"


@pytest.fixture
def tls_settings(tls_node: TlsNode, private_db_url: str) -> Settings:
    """The TLS node over amqps://, trusting the test's CA, and the private database."""
    return Settings.from_env(
        amqp_url=tls_node.url(),
        amqp_ca_file=str(tls_node.ca_file),
        rabbitmq_mgmt_url=tls_node.mgmt_url,
        mongo_url=private_db_url,
        postgres_url="",
        secret_key=os.environ.get("FAIRWAY_SECRET_KEY") or TEST_SECRET_KEY,
    )


@pytest.fixture
def tls_pipeline(tls_node: TlsNode, tls_settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    with Pipeline(
        tls_settings, tmp_path, prefix="tls", mgmt_url=tls_node.mgmt_url, tenant_refresh_s=0.5
    ) as pipeline:
        yield pipeline


def _mqtts_client(ca_file: Path) -> mqtt.Client:
    """An MQTT client that verifies the server against ``ca_file`` (and its host name)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tls-{os.getpid()}")
    client.tls_set(ca_certs=str(ca_file), cert_reqs=ssl.CERT_REQUIRED)
    return client


def test_relay_scheduler_gateway_and_celery_over_amqps(
    tls_pipeline: Pipeline, tls_node: TlsNode
) -> None:
    """Fairway's processes verify the TLS node and work on it; AMQPS and MQTTS readings stored."""
    pipeline = tls_pipeline  # created (vhost, topology, indexes) over amqps already
    pipeline.tenant("acme")
    pipeline.device("acme", "dev-1")
    pipeline.start("relay")
    pipeline.start("scheduler")
    gateway = pipeline.start("gateway", gateway_port=free_port())

    pipeline.publish([("dev-1.env", reading(temp=20.0), {"message_id": "amqps-1"})])
    pipeline.wait_stored(1, device="dev-1", stream="env")

    client = _mqtts_client(tls_node.ca_file)
    client.username_pw_set(f"{pipeline.name}:guest", "guest")  # "vhost:user" for MQTT
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if rc == 0 else None
    client.connect(HOST, tls_node.mqtts_port)
    client.loop_start()
    try:
        assert connected.wait(10), "MQTTS connection refused"
        assert isinstance(client.socket(), ssl.SSLSocket)
        info = client.publish("dev-1/power", orjson.dumps(reading(watts=3.0)), qos=1)
        info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    pipeline.wait_stored(1, device="dev-1", stream="power")

    wait_for(lambda: gateway.metric("fairway_gateway_amqp_up") == 1, 15, "gateway on amqps")

    celery = make_celery(pipeline.settings)
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        assert connection.transport.driver_type == "amqp"
        assert isinstance(connection.connection.sock, ssl.SSLSocket)
    for role in ("relay", "scheduler", "gateway"):
        assert pipeline.alive(role), role


def test_a_broker_signed_by_another_ca_is_refused(
    tls_node: TlsNode, tls_settings: Settings, tmp_path: Path
) -> None:
    wrong = Settings.from_env(tls_settings.environ(), amqp_ca_file=str(tls_node.other_ca_file))
    with (
        pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate in"),
        blocking_channel(wrong, "fairway-tls-test"),
    ):
        pass

    with (
        pytest.raises(OperationalError, match="CERTIFICATE_VERIFY_FAILED"),
        make_celery(wrong).connection_for_write() as connection,
    ):
        connection.ensure_connection(max_retries=1)

    client = _mqtts_client(tls_node.other_ca_file)
    client.username_pw_set("guest", "guest")
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect(HOST, tls_node.mqtts_port)

    # The push gateway (Twisted) keeps retrying but never counts itself connected.
    log_path = tmp_path / "gateway.log"
    with running(
        ["gateway"], Settings.from_env(wrong.environ(), gateway_port=free_port()), log_path
    ) as gateway:
        wait_for(lambda: "certificate verify failed" in log_path.read_text(), 20, "gateway refusal")
        assert gateway.alive()
        assert gateway.metric("fairway_gateway_amqp_up") == 0


def test_the_host_name_is_checked(
    tls_node: TlsNode, tls_settings: Settings, tmp_path: Path
) -> None:
    """Right CA, right node, but a name the certificate does not carry: refused."""
    by_address = Settings.from_env(tls_settings.environ(), amqp_url=tls_node.url("127.0.0.1"))
    with (
        pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"),
        blocking_channel(by_address, "fairway-tls-test"),
    ):
        pass
    with (
        pytest.raises(OperationalError, match="IP address mismatch"),
        make_celery(by_address).connection_for_write() as connection,
    ):
        connection.ensure_connection(max_retries=1)

    client = _mqtts_client(tls_node.ca_file)
    client.username_pw_set("guest", "guest")
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect("127.0.0.1", tls_node.mqtts_port)

    log_path = tmp_path / "gateway.log"
    gateway_settings = Settings.from_env(by_address.environ(), gateway_port=free_port())
    with running(["gateway"], gateway_settings, log_path) as gateway:
        wait_for(lambda: "IPAddressMismatch" in log_path.read_text(), 20, "gateway refusal")
        assert gateway.alive()
        assert gateway.metric("fairway_gateway_amqp_up") == 0


def test_a_missing_ca_file_stops_a_process_at_start(tls_settings: Settings, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRWAY_")}
    env.update(tls_settings.environ(), FAIRWAY_AMQP_CA_FILE=str(tmp_path / "missing.pem"))
    result = subprocess.run(
        [sys.executable, "-m", "fairway", "relay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "FAIRWAY_AMQP_CA_FILE" in result.stderr


def _device_login(settings: Settings, node: TlsNode, user: str) -> None:
    url = f"amqps://{user}:{DEVICE_SECRET}@{HOST}:{node.amqps_port}/%2F"
    with blocking_channel(Settings.from_env(settings.environ(), amqp_url=url), "device"):
        pass


def test_the_broker_asks_the_auth_backend_over_verified_https(
    tls_node: TlsNode, tls_settings: Settings
) -> None:
    """Device logins go to the auth backend over HTTPS; a certificate from another CA or
    for another name ends the call before any request, and the login is refused."""
    auth = tls_node.auth
    auth.context = tls_node.auth_contexts["right"]
    _device_login(tls_settings, tls_node, "dev-https-1")
    assert "dev-https-1" in auth.users
    for case in ("other-ca", "other-name"):
        auth.context = tls_node.auth_contexts[case]
        user = f"dev-https-{case}"  # a fresh name: the broker caches answers per user
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            _device_login(tls_settings, tls_node, user)
        assert user not in auth.users, case
    auth.context = tls_node.auth_contexts["right"]
