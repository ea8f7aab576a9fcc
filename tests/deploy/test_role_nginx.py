"""The ``nginx`` role applied for real to a Debian test host in front of ``fairway web`` and
``fairway gateway`` running on this machine: pages, the JSON API and Server-Sent Events
through it over TLS with a certificate the test made; ``/broker/`` and ``/metrics``
refused; a second run changes nothing; a bad variable, and a configuration ``nginx -t``
refuses, fail the run while the running proxy keeps serving."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest
import trustme

from fairway.devtools.processes import free_port
from fairway.kernel import topology
from fairway.provision import create_user
from fairway.storage import accounts
from tests.deploy import fairway_checks as fw
from tests.deploy.testhosts import GATEWAY, Host, Run, TestNetwork
from tests.harness import FairwayProcess, Pipeline

NAME = "fairway.test"  # nginx_server_name; the certificate names it
PASSWORD = "proxy-test-password-0123"

pytestmark = pytest.mark.timeout(1200)  # slower when other work shares the machine


@dataclass
class Proxy:
    """The proxy host, its inventory and variables, its first two runs, the TLS trust."""

    host: Host
    inventory: Path
    variables: dict[str, Any]
    first: Run
    second: Run
    trust: ssl.SSLContext
    pipeline: Pipeline

    def connection(self, timeout: float = 30) -> http.client.HTTPSConnection:
        """HTTPS to the proxy's address, verifying the certificate names ``NAME``."""
        return _Https(self.host.address, self.trust, timeout)


class _Https(http.client.HTTPSConnection):
    """Connects to an address but checks the certificate (and sends SNI) for ``NAME``."""

    def __init__(self, address: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(NAME, 443, timeout=timeout, context=context)
        self.address = address
        self.context = context

    def connect(self) -> None:
        sock = socket.create_connection((self.address, 443), self.timeout)
        self.sock = self.context.wrap_socket(sock, server_hostname=NAME)


def request(
    proxy: Proxy, method: str, path: str, body: Any = None, cookie: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One request through the proxy: status, headers (lower-case names), body."""
    conn = proxy.connection()
    headers = {"content-type": "application/json"} if body is not None else {}
    if cookie:
        headers["cookie"] = cookie
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    found = {k.lower(): v for k, v in response.getheaders()}
    conn.close()
    return response.status, found, data


@pytest.fixture(scope="module")
def proxy(
    testnet: TestNetwork, private_mongo: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """proxy1 with the role applied twice, and the web app and gateway behind it."""
    workdir = tmp_path_factory.mktemp("nginx-role")
    web_port, gateway_port = free_port(), free_port()
    base = fw.settings(
        mongo_url=f"{private_mongo}nginx-role",
        web_host=GATEWAY,
        web_port=web_port,
        broker_auth_port=free_port(),  # not the default, which other runs may hold
        gateway_host=GATEWAY,
        gateway_port=gateway_port,
        gateway_public_url=f"https://{NAME}/push",
        proxy_hops=1,
        cookie_secure=True,
    )
    pipeline = Pipeline(base, workdir, prefix="nginx").create()
    procs: list[FairwayProcess] = []
    host = testnet.add("proxy1", 40)
    try:
        procs.append(fw.start("web", pipeline.settings, workdir, f"{GATEWAY}:{web_port}"))
        procs.append(fw.start("gateway", pipeline.settings, workdir, f"{GATEWAY}:{gateway_port}"))
        create_user(pipeline.settings, pipeline.db, "ops", PASSWORD, accounts.OPERATOR, None)
        ca = trustme.CA()
        cert = ca.issue_cert(NAME)
        variables = {
            "nginx_server_name": NAME,
            "nginx_web_port": web_port,
            "nginx_gateway_port": gateway_port,
            "nginx_tls_certificate": b"".join(p.bytes() for p in cert.cert_chain_pems).decode(),
            "nginx_tls_key": cert.private_key_pem.bytes().decode(),
        }
        # The app "host" is this machine, seen from the proxy at the bridge's address.
        inventory = testnet.inventory(
            {"proxy": {"proxy1": {}}, "fairway": {"app1": {"ansible_host": GATEWAY}}},
            workdir / "hosts.yml",
        )
        first = testnet.playbook(inventory, variables, "site.yml", "--limit", "proxy")
        assert first.returncode == 0, first.tail()
        second = testnet.playbook(inventory, variables, "site.yml", "--limit", "proxy")
        assert second.returncode == 0, second.tail()
        trust = ssl.create_default_context()
        ca.configure_trust(trust)
        yield Proxy(host, inventory, variables, first, second, trust, pipeline)
    finally:
        for proc in procs:
            proc.stop()
        testnet.remove("proxy1")
        pipeline.destroy()


def test_the_role_applies_then_changes_nothing_and_nginx_t_passes(proxy: Proxy) -> None:
    assert proxy.first.changed("proxy1") > 0
    assert "nginx : Reload nginx" in proxy.first.tasks("changed")
    assert proxy.second.changed("proxy1") == 0, proxy.second.tasks("changed")
    checked = proxy.host.ssh("nginx -t 2>&1").stdout
    assert "syntax is ok" in checked and "test is successful" in checked
    assert proxy.host.ssh("systemctl is-enabled nginx").stdout.strip() == "enabled"


def login(proxy: Proxy) -> str:
    """Log in through the proxy; the session cookie (marked Secure, as behind TLS)."""
    status, headers, body = request(
        proxy, "POST", "/api/login", {"user": "ops", "password": PASSWORD}
    )
    assert status == 200, body
    cookie = headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie
    return cookie.split(";")[0]


def test_pages_and_the_api_through_tls(proxy: Proxy) -> None:
    status, headers, body = request(proxy, "GET", "/login")
    assert status == 200 and b"<form" in body
    assert headers["strict-transport-security"] == "max-age=31536000"
    cookie = login(proxy)
    status, _, body = request(proxy, "GET", "/api/me", cookie=cookie)
    assert status == 200 and orjson.loads(body)["user"] == "ops"
    status, _, body = request(proxy, "GET", "/", cookie=cookie)
    assert status == 200 and b"<html" in body.lower()
    # Plain HTTP is redirected to HTTPS.
    conn = http.client.HTTPConnection(proxy.host.address, 80, timeout=10)
    conn.request("GET", "/login", headers={"host": NAME})
    answer = conn.getresponse()
    assert answer.status == 301 and answer.getheader("location") == f"https://{NAME}/login"


def test_broker_and_metrics_are_refused_from_outside(proxy: Proxy) -> None:
    for method, path in (
        ("POST", "/broker/user"),
        ("POST", "/broker/resource"),
        ("GET", "/metrics"),
    ):
        status, _, _ = request(proxy, method, path, body={} if method == "POST" else None)
        assert status == 403, path
    # Behind the proxy the web app itself would see the proxy's address for /broker/:
    # the refusal must be nginx's, whatever the app's broker_auth_networks say.
    assert fw.answers(GATEWAY, proxy.pipeline.settings.web_port)


def test_server_sent_events_through_the_proxy(proxy: Proxy) -> None:
    cookie = login(proxy)
    status, _, body = request(proxy, "GET", "/api/push-token", cookie=cookie)
    assert status == 200, body
    grant = orjson.loads(body)
    assert grant["url"] == f"https://{NAME}/push"
    conn = proxy.connection(timeout=30)
    conn.request("GET", f"/push/events?token={grant['token']}")
    stream = conn.getresponse()
    assert stream.status == 200
    assert stream.getheader("content-type", "").startswith("text/event-stream")
    assert stream.getheader("x-accel-buffering") == "no"
    events = fw.sse_events(stream)
    assert next(events)[0] == "ready"
    mark = f"through-nginx-{time.time_ns()}"
    sent = time.monotonic()
    with proxy.pipeline.channel() as channel:
        channel.basic_publish(
            topology.EVENTS,
            "telemetry.acme.dev-1",
            orjson.dumps(
                {"kind": "telemetry", "tenant": "acme", "device": "dev-1", "values": {"m": mark}}
            ),
            pika.BasicProperties(content_type="application/json"),
        )
    for name, data in events:
        if name == "telemetry" and data["values"]["m"] == mark:
            break
    # Not buffered: the event arrives at once, not when a buffer fills or the stream ends.
    assert time.monotonic() - sent < 5
    conn.close()


def test_bad_variables_fail_the_run_and_nginx_keeps_serving(
    proxy: Proxy, testnet: TestNetwork
) -> None:
    # The role's own check: a certificate without its key.
    result = testnet.playbook(
        proxy.inventory, {**proxy.variables, "nginx_tls_key": ""}, "site.yml", "--limit", "proxy"
    )
    assert result.returncode != 0
    task, message = result.failure()
    assert task == "nginx : Check the TLS settings", result.tail()
    assert "set nginx_tls_certificate and nginx_tls_key together" in message
    assert result.changed() == 0
    # A value nginx refuses: the role's `nginx -t` stops the run before the reload.
    broken = {**proxy.variables, "nginx_client_max_body_size": "ten megabytes"}
    result = testnet.playbook(proxy.inventory, broken, "site.yml", "--limit", "proxy")
    assert result.returncode != 0
    task, message = result.failure()
    assert task == "nginx : Check the nginx configuration", result.tail()
    assert "client_max_body_size" in message
    assert "nginx : Reload nginx" not in result.tasks("changed")
    status, _, _ = request(proxy, "GET", "/login")
    assert status == 200
    # The next good run puts the configuration back.
    again = testnet.playbook(proxy.inventory, proxy.variables, "site.yml", "--limit", "proxy")
    assert again.returncode == 0, again.tail()
    assert "test is successful" in proxy.host.ssh("nginx -t 2>&1").stdout
