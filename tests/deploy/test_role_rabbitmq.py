"""The ``rabbitmq`` role applied for real to one Debian test host (tests/deploy/testhosts.py):
the node runs on the files the role wrote, also after a reboot; a second run changes
nothing; Fairway's declare, relay, scheduler and device logins (the HTTP auth backend
on this machine) work against it; the policy applies to quorum tenant queues."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from fairway.amqp import management as rabbitmq_api
from fairway.devtools.processes import free_port, wait_for
from tests.deploy import fairway_checks as fw
from tests.deploy.testhosts import GATEWAY, Host, Run, TestNetwork, install_broker_tls

TLS_DIR = "/etc/rabbitmq/tls"

pytestmark = pytest.mark.timeout(1200)  # slower when other work shares the machine


@dataclass
class Node:
    """The host, the variables the role got, and its first two runs."""

    host: Host
    variables: dict[str, Any]
    inventory: Path
    first: Run
    second: Run
    ca_file: Path
    web_port: int
    auth_port: int  # the web app's broker-auth port, which the broker asks


def secrets_for_rabbitmq() -> dict[str, str]:
    """Fresh service account passwords and Erlang cookie (URL-safe, as the vault asks)."""
    return {
        "rabbitmq_erlang_cookie": secrets.token_urlsafe(32),
        "rabbitmq_fairway_password": secrets.token_urlsafe(16),
        "rabbitmq_fairway_web_password": secrets.token_urlsafe(16),
        "rabbitmq_admin_password": secrets.token_urlsafe(16),
    }


@pytest.fixture(scope="module")
def node(testnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """rabbit1 with the role applied twice."""
    workdir = tmp_path_factory.mktemp("rabbitmq-role")
    host = testnet.add("rabbit1", 11)
    try:
        ca = trustme.CA()
        ca_file = workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        install_broker_tls(host, ca, TLS_DIR)
        web_port, auth_port = free_port(), free_port()
        variables = {
            **secrets_for_rabbitmq(),
            # Device logins: the web app this test runs on this machine (its auth port).
            "rabbitmq_auth_http_url": f"http://{GATEWAY}:{auth_port}/broker",
            "rabbitmq_tls_certfile": f"{TLS_DIR}/server.pem",
            "rabbitmq_tls_keyfile": f"{TLS_DIR}/server-key.pem",
            "rabbitmq_tls_cacertfile": f"{TLS_DIR}/ca.pem",
            # One node, yet the cluster's policies: the tenant queues are quorum queues here.
            "rabbitmq_quorum": True,
        }
        inventory = testnet.inventory({"rabbitmq": {"rabbit1": {}}}, workdir / "hosts.yml")
        first = testnet.playbook(inventory, variables)
        assert first.returncode == 0, first.tail()
        second = testnet.playbook(inventory, variables)
        assert second.returncode == 0, second.tail()
        yield Node(host, variables, inventory, first, second, ca_file, web_port, auth_port)
    finally:
        testnet.remove("rabbit1")


def test_a_bad_variable_fails_with_the_roles_message(testnet: TestNetwork, tmp_path: Path) -> None:
    host = testnet.add("rabbit9", 19)
    try:
        inventory = testnet.inventory({"rabbitmq": {"rabbit9": {}}}, tmp_path / "hosts.yml")
        bad = {**secrets_for_rabbitmq(), "rabbitmq_erlang_cookie": "too-short"}
        result = testnet.playbook(inventory, bad)
        assert result.returncode != 0
        task, message = result.failure()
        assert task == "rabbitmq : Check the required secrets", result.tail()
        assert "set rabbitmq_erlang_cookie (20+ characters)" in message
        assert result.recap["rabbit9"]["changed"] == 0
        assert not host.path("/etc/rabbitmq").exists()
    finally:
        testnet.remove("rabbit9")


def test_the_role_applies_then_changes_nothing(node: Node) -> None:
    assert node.first.changed("rabbit1") > 0
    assert "rabbitmq : Install RabbitMQ" in node.first.tasks("changed")
    # A fresh install starts from the role's files: no restart after it.
    assert "rabbitmq : Restart rabbitmq" not in node.first.tasks("changed")
    assert node.second.changed("rabbit1") == 0, node.second.tasks("changed")


def status(host: Host) -> dict[str, Any]:
    """``rabbitmq-diagnostics status`` as JSON."""
    out = host.ssh("rabbitmq-diagnostics -q status --formatter json").stdout
    return json.loads(out)


def app_env(host: Host, app: str, key: str) -> str:
    """An application setting of the running node, as Erlang prints it."""
    expr = f"application:get_env({app}, {key})."
    return host.ssh(f"rabbitmqctl -q eval '{expr}'").stdout.strip()


def check_runs_on_the_role_files(node: Node) -> None:
    host, v = node.host, node.variables
    found = status(host)
    assert sorted(found["config_files"]) == [
        "/etc/rabbitmq/advanced.config",
        "/etc/rabbitmq/rabbitmq.conf",
    ]
    assert found["enabled_plugin_file"] == "/etc/rabbitmq/enabled_plugins"
    plugins = host.path("/etc/rabbitmq/enabled_plugins").read_text().strip()
    assert plugins == "[rabbitmq_management,rabbitmq_mqtt,rabbitmq_event_exchange," + (
        "rabbitmq_prometheus,rabbitmq_auth_backend_http,rabbitmq_auth_backend_cache]."
    )
    for plugin in plugins[1:-2].split(","):
        assert plugin in found["active_plugins"], plugin
    listeners = {(x["protocol"], x["port"]) for x in found["listeners"]}
    assert {
        ("amqp", 5672),
        ("amqp/ssl", 5671),
        ("mqtt", 1883),
        ("mqtt/ssl", 8883),
        ("http", 15672),
        ("http/prometheus", 15692),
        ("clustering", 25672),
    } <= listeners, listeners
    assert app_env(host, "rabbit", "max_message_size") == "{ok,131072}"
    assert app_env(host, "rabbit", "vm_memory_high_watermark") == "{ok,0.4}"
    assert app_env(host, "rabbitmq_mqtt", "exchange") == '{ok,<<"telemetry">>}'
    assert app_env(host, "rabbitmq_mqtt", "allow_anonymous") == "{ok,false}"
    url = v["rabbitmq_auth_http_url"]
    assert app_env(host, "rabbitmq_auth_backend_http", "user_path") == f'{{ok,"{url}/user"}}'
    assert app_env(host, "rabbitmq_auth_backend_cache", "cache_ttl") == "{ok,60000}"
    # The definitions file: the service accounts and nothing else (no guest).
    users = {u["name"] for u in host_api(node, "GET", "users")}
    assert users == {"fairway", "fairway-web", "admin"}
    policies = host_api(node, "GET", "policies/fairway")
    assert [p["name"] for p in policies] == ["fairway-tenant-queues"]


def host_api(node: Node, method: str, path: str) -> Any:
    """The node's management API as the role's ``admin`` account, from this machine."""
    url = f"http://admin:{node.variables['rabbitmq_admin_password']}@{node.host.address}:15672"
    return rabbitmq_api.call(url, method, path)


def test_the_node_runs_on_the_files_the_role_wrote_also_after_a_reboot(
    node: Node, testnet: TestNetwork
) -> None:
    check_runs_on_the_role_files(node)
    testnet.restart("rabbit1")
    node.host.ssh("rabbitmq-diagnostics -q check_running", timeout=180)
    check_runs_on_the_role_files(node)


def test_fairway_declares_relays_stores_and_logs_devices_in(
    node: Node, private_mongo: str, tmp_path: Path
) -> None:
    host, v = node.host, node.variables
    config = fw.settings(
        amqp_url=f"amqps://fairway:{v['rabbitmq_fairway_password']}@{host.address}:5671/fairway",
        amqp_ca_file=str(node.ca_file),
        mongo_url=f"{private_mongo}rabbitmq-role",
        rabbitmq_mgmt_url=(
            f"http://fairway-web:{v['rabbitmq_fairway_web_password']}@{host.address}:15672"
        ),
        queue_type="quorum",
        web_host=GATEWAY,
        web_port=node.web_port,
        broker_auth_port=node.auth_port,
        broker_auth_networks=f"{host.address}/32",
    )
    assert fw.cli(config, "declare")["declared"]
    fw.cli(config, "tenant", "create", "acme")
    creds = fw.cli(config, "device", "register", "acme", "boiler-7")
    web = f"{GATEWAY}:{node.web_port}"
    with fw.running(config, tmp_path, "web", "relay", "scheduler", web=web):
        # Device logins go from the broker to the web app (HTTP auth backend).
        fw.publish_amqp(config, "boiler-7", creds["password"], "over-amqps")
        fw.publish_mqtt(host.address, 1883, "fairway", "boiler-7", creds["password"], "mqtt")
        fw.publish_mqtt(
            host.address, 8883, "fairway", "boiler-7", creds["password"], "mqtts",
            ca_file=str(node.ca_file),
        )  # fmt: skip
        docs = fw.stored(config, "boiler-7", 3)
        assert {d["msg_id"] for d in docs} >= {"over-amqps", "mqtt", "mqtts"}
        assert fw.amqp_login_refused(config, "boiler-7", "not-its-password")
    # Quorum tenant queues, with the role's policy in effect.
    (queue,) = queues(host, "tenant.acme")
    assert queue["type"] == "quorum", queue
    assert queue["policy"] == "fairway-tenant-queues", queue
    # The management API shows the effective definition once the queue's stats arrive.
    definition = wait_for(
        lambda: host_api(node, "GET", "queues/fairway/tenant.acme").get(
            "effective_policy_definition"
        ),
        30,
        "the policy's effective definition",
    )
    assert definition == {"delivery-limit": 20, "dead-letter-strategy": "at-least-once"}


def queues(host: Host, *names: str) -> list[dict[str, Any]]:
    """The node's view of queues of the ``fairway`` vhost (all, or those named)."""
    out = host.ssh(
        "rabbitmqctl -q list_queues -p fairway name type policy arguments members --formatter json"
    ).stdout
    found = json.loads(out)
    return [q for q in found if not names or q["name"] in names]


def test_a_changed_setting_restarts_the_node_and_a_changed_password_needs_no_restart(
    node: Node, testnet: TestNetwork
) -> None:
    started = status(node.host)["uptime"]
    changed = {**node.variables, "rabbitmq_auth_cache_ttl_ms": 30000}
    result = testnet.playbook(node.inventory, changed)
    assert result.returncode == 0, result.tail()
    node.variables.update(changed)
    assert "rabbitmq : Restart rabbitmq" in result.tasks("changed")
    assert app_env(node.host, "rabbitmq_auth_backend_cache", "cache_ttl") == "{ok,30000}"
    assert status(node.host)["uptime"] < started
    # An account's password lives in the definitions file: re-imported, no restart.
    new_password = secrets.token_urlsafe(16)
    result = testnet.playbook(node.inventory, {**changed, "rabbitmq_admin_password": new_password})
    assert result.returncode == 0, result.tail()
    node.variables["rabbitmq_admin_password"] = new_password
    assert result.tasks("changed") == [
        "rabbitmq : Write the definitions (vhost, service accounts, permissions, policies)",
        "rabbitmq : Import definitions",
    ]
    url = f"http://admin:{new_password}@{node.host.address}:15672"
    assert rabbitmq_api.call(url, "GET", "whoami")["name"] == "admin"
