"""``site.yml`` with the ``single`` inventory (its group_vars as shipped) on one Debian
test host, end to end: RabbitMQ, every Fairway process under systemd, nginx with its
self-signed certificate. A device publishes over AMQPS, the reading is stored, the
dashboard answers through the proxy; a second run changes nothing.

Two documented departures: MongoDB's repository is unreachable here, so the ``mongodb``
group is empty and ``fairway_settings.mongo_url`` points at this machine's FerretDB
(through a forwarder on the bridge); the host has no PyPI, so the fairway role installs
from a wheelhouse (``fairway_pip_extra_args``)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from fairway.devtools.processes import free_port, wait_for
from tests.deploy import fairway_checks as fw
from tests.deploy.testhosts import (
    GATEWAY,
    Host,
    Run,
    TestNetwork,
    forward,
    fresh_vault,
    install_broker_tls,
)

pytestmark = pytest.mark.timeout(1800)

NAME = "fairway.example.com"  # the single inventory's nginx_server_name
WHEELHOUSE = "/srv/wheelhouse"
UNITS = [
    "fairway-web-1", "fairway-gateway-1", "fairway-relay-1", "fairway-relay-2",
    "fairway-scheduler-1", "fairway-monitor-1", "fairway-archiver-1",
    "fairway-worker-cpu-1", "fairway-worker-maintenance-1", "fairway-beat-1",
]  # fmt: skip


@dataclass
class Site:
    host: Host
    vault: dict[str, str]
    first: Run
    second: Run
    ca_file: Path
    mongo_url: str
    inventory: Path
    variables: dict[str, Any]


@pytest.fixture(scope="module")
def site(
    testnet: TestNetwork,
    private_mongo: str,
    tmp_path_factory: pytest.TempPathFactory,
    wheel: Path,
    wheelhouse: Path,
) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("single")
    db_port = free_port()
    database = "single-inventory"
    mongo = urllib.parse.urlsplit(private_mongo)
    # The host reaches the tests' FerretDB (on 127.0.0.1) through the bridge.
    with forward((GATEWAY, db_port), (mongo.hostname or "", mongo.port or 0)):
        host = testnet.add("fairway1", 10, binds={str(wheelhouse): WHEELHOUSE})
        try:
            ca = trustme.CA()
            ca_file = workdir / "ca.pem"
            ca.cert_pem.write_to_path(str(ca_file))
            install_broker_tls(host, ca)
            vault = fresh_vault()
            inventory = testnet.copy_inventory("single", workdir / "single", vault)
            doc = yaml.safe_load(inventory.read_text())
            doc["all"]["children"]["mongodb"] = {"hosts": {}}  # unreachable repository
            inventory.write_text(yaml.safe_dump(doc))
            shipped = yaml.safe_load((inventory.parent / "group_vars/all/vars.yml").read_text())
            variables: dict[str, Any] = {
                "fairway_wheel": str(wheel),
                "fairway_pip_extra_args": ["--no-index", "--find-links", WHEELHOUSE],
                "fairway_settings": {
                    **shipped["fairway_settings"],
                    "mongo_url": f"mongodb://{GATEWAY}:{db_port}/{database}",
                },
            }
            first = testnet.playbook(inventory, variables, timeout=1500)
            assert first.returncode == 0, first.tail()
            second = testnet.playbook(inventory, variables, timeout=900)
            assert second.returncode == 0, second.tail()
            mongo_url = f"{private_mongo}{database}"
            yield Site(host, vault, first, second, ca_file, mongo_url, inventory, variables)
        finally:
            testnet.remove("fairway1")


def test_site_applies_then_changes_nothing(site: Site) -> None:
    assert site.first.changed("fairway1") > 0
    assert site.second.changed("fairway1") == 0, site.second.tasks("changed")


def test_every_fairway_process_runs_under_systemd(site: Site) -> None:
    time.sleep(5)  # a unit that crashes at start shows it within its RestartSec (2 s)
    for unit in UNITS:
        shown = site.host.ssh(f"systemctl show -p ActiveState -p NRestarts {unit}").stdout
        assert "ActiveState=active" in shown and "NRestarts=0" in shown, (
            unit,
            shown,
            site.host.ssh(f"journalctl -u {unit} -n 20 -o cat", check=False).stdout,
        )
    for service in ("rabbitmq-server", "nginx", "fairway.target"):
        assert site.host.ssh(f"systemctl is-active {service}").stdout.strip() == "active"


def host_cli(site: Site, *args: str) -> Any:
    """``fairway <args>`` on the host, with the role's environment file."""
    command = " ".join(args)
    out = site.host.ssh(
        f"set -a; . /etc/fairway/fairway.env; cd /var/lib/fairway; "
        f"runuser -u fairway -- /opt/fairway/venv/bin/fairway {command}"
    ).stdout
    return json.loads(out)


def test_a_device_publishes_the_reading_is_stored_the_dashboard_answers(site: Site) -> None:
    host = site.host
    host_cli(site, "tenant", "create", "acme")
    creds = host_cli(site, "device", "register", "acme", "boiler-7")
    # The dashboard, through nginx and its self-signed certificate, as the operator.
    trust = ssl.create_default_context(cadata=host.path("/etc/nginx/tls/fairway.crt").read_text())
    cookie = _login(host, trust, "operator", site.vault["vault_fairway_operator_password"])
    status, body = _get(host, trust, "/", cookie)
    assert status == 200 and b"<html" in body.lower()
    # Live readings: the push gateway's stream through nginx, opened before the device sends.
    status, body = _get(host, trust, "/api/push-token", cookie)
    assert status == 200, body
    grant = json.loads(body)
    assert grant["url"] == f"https://{NAME}/push"
    push = _connection(host, trust)
    push.request("GET", f"/push/events?token={grant['token']}")
    stream = push.getresponse()
    assert stream.status == 200
    events = fw.sse_events(stream)
    assert next(events)[0] == "ready"
    # Devices reach the broker over AMQPS only (plain AMQP stays on the host's loopback).
    device = fw.settings(
        amqp_url=f"amqps://x:y@{host.address}:5671/fairway", amqp_ca_file=str(site.ca_file)
    )
    assert not fw.answers(host.address, 5672)
    fw.publish_amqp(device, "boiler-7", creds["password"], "end-to-end")
    (doc,) = fw.stored(fw.settings(mongo_url=site.mongo_url), "boiler-7", 1)
    assert doc["msg_id"] == "end-to-end" and doc["values"] == {"temp": 21.5}
    for name, data in events:
        if name == "telemetry" and data.get("device") == "boiler-7":
            break
    push.close()
    status, body = _get(host, trust, "/devices/boiler-7", cookie)
    assert status == 200 and b"boiler-7" in body

    def latest() -> Any:
        status, body = _get(host, trust, "/api/devices/boiler-7", cookie)
        assert status == 200, body
        return json.loads(body)["latest"].get("env")

    assert wait_for(latest, 30, "the device's latest reading")["id"] == "end-to-end"


def test_a_bad_setting_fails_with_fairways_message_and_the_processes_keep_theirs(
    site: Site, testnet: TestNetwork
) -> None:
    before = site.host.path("/etc/fairway/fairway.env").read_text()
    settings = {**site.variables["fairway_settings"], "queue_type": "quorom"}
    result = testnet.playbook(site.inventory, {**site.variables, "fairway_settings": settings})
    assert result.returncode != 0
    task, message = result.failure()
    assert task == "fairway : Check the Fairway settings", result.tail()
    assert "FAIRWAY_QUEUE_TYPE='quorom'" in message, message
    assert result.changed() == 0
    assert site.host.path("/etc/fairway/fairway.env").read_text() == before
    assert site.host.ssh("systemctl is-active fairway-relay-1").stdout.strip() == "active"


def _connection(host: Host, trust: ssl.SSLContext) -> http.client.HTTPSConnection:
    class Https(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = socket.create_connection((host.address, 443), 30)
            self.sock = trust.wrap_socket(sock, server_hostname=NAME)

    return Https(NAME, 443, timeout=30, context=trust)


def _login(host: Host, trust: ssl.SSLContext, user: str, password: str) -> str:
    conn = _connection(host, trust)
    conn.request(
        "POST",
        "/api/login",
        body=json.dumps({"user": user, "password": password}),
        headers={"content-type": "application/json"},
    )
    answer = conn.getresponse()
    body = answer.read()
    assert answer.status == 200, body
    return (answer.getheader("set-cookie") or "").split(";")[0]


def _get(host: Host, trust: ssl.SSLContext, path: str, cookie: str) -> tuple[int, bytes]:
    conn = _connection(host, trust)
    conn.request("GET", path, headers={"cookie": cookie})
    answer = conn.getresponse()
    return answer.status, answer.read()
