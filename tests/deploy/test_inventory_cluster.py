"""``site.yml`` with the ``cluster`` inventory (its group_vars as shipped) on four Debian
test hosts: three RabbitMQ nodes and the proxy. The nodes form one cluster on their
first boot; device logins go from each node over verified HTTPS to the proxy's
broker-auth server and on to ``fairway web`` on this machine (standing in for the app
hosts); Fairway's processes reach the cluster over AMQPS; tenant queues are quorum
queues on all three nodes; a second run changes nothing."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from fairway.devtools.processes import free_port
from tests.deploy import fairway_checks as fw
from tests.deploy.testhosts import (
    GATEWAY,
    Host,
    Run,
    TestNetwork,
    fresh_vault,
    install_broker_tls,
)

# Four hosts, 1.5 to 3 minutes: left out of make test for time; make test-long runs it.
pytestmark = [pytest.mark.hosts_long, pytest.mark.timeout(1800)]

NODES = {"rabbit1": 11, "rabbit2": 12, "rabbit3": 13}
SERVER_NAME = "fairway.example.com"  # the cluster inventory's nginx_server_name


@dataclass
class Cluster:
    nodes: dict[str, Host]
    proxy: Host
    vault: dict[str, str]
    first: Run
    second: Run
    ca_file: Path
    web_port: int
    auth_port: int  # the web app's broker-auth port, behind the proxy's port 8443


@pytest.fixture(scope="module")
def cluster(testnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    names = [*NODES, "proxy1"]
    try:
        nodes = {name: testnet.add(name, octet) for name, octet in NODES.items()}
        proxy = testnet.add("proxy1", 40)
        ca = trustme.CA()
        ca_file = workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        for node in nodes.values():
            install_broker_tls(node, ca)
            # The operator's DNS: the brokers reach the proxy by its public name.
            with open(node.path("/etc/hosts"), "a") as hosts:
                hosts.write(f"{proxy.address}\t{SERVER_NAME}\n")
        proxy_cert = ca.issue_cert(SERVER_NAME)
        vault = fresh_vault()
        web_port, auth_port = free_port(), free_port()
        # The app hosts are this machine (fairway web runs here, on the bridge).
        inventory = testnet.copy_inventory(
            "cluster", workdir / "cluster", vault, {"app1": GATEWAY, "app2": GATEWAY}
        )
        variables = {
            "nginx_web_port": web_port,
            "nginx_app_broker_auth_port": auth_port,
            "nginx_gateway_port": free_port(),
            "nginx_tls_certificate": b"".join(
                p.bytes() for p in proxy_cert.cert_chain_pems
            ).decode(),
            "nginx_tls_key": proxy_cert.private_key_pem.bytes().decode(),
        }
        limit = ("--limit", "rabbitmq,proxy")
        first = testnet.playbook(inventory, variables, "site.yml", *limit)
        assert first.returncode == 0, first.tail()
        second = testnet.playbook(inventory, variables, "site.yml", *limit)
        assert second.returncode == 0, second.tail()
        yield Cluster(nodes, proxy, vault, first, second, ca_file, web_port, auth_port)
    finally:
        for name in names:
            if name in testnet.hosts:
                testnet.remove(name)


def test_the_cluster_forms_and_a_second_run_changes_nothing(cluster: Cluster) -> None:
    assert set(cluster.first.recap) == {*NODES, "proxy1"}
    for name in NODES:
        assert cluster.first.changed(name) > 0
    assert cluster.second.changed() == 0, cluster.second.tasks("changed")
    expected = sorted(f"rabbit@{name}" for name in NODES)
    for node in cluster.nodes.values():
        found = json.loads(
            node.ssh("rabbitmq-diagnostics -q cluster_status --formatter json").stdout
        )
        assert sorted(found["running_nodes"]) == expected, (node.name, found)
        assert sorted(found["disk_nodes"]) == expected


def test_plain_listeners_stay_on_loopback(cluster: Cluster) -> None:
    node = cluster.nodes["rabbit2"]
    for port in (5672, 1883):
        assert not fw.answers(node.address, port), port
    for port in (5671, 8883):
        assert fw.answers(node.address, port), port


def test_fairway_on_the_cluster_with_device_logins_through_the_proxy(
    cluster: Cluster, private_mongo: str, tmp_path: Path
) -> None:
    v, rabbit1 = cluster.vault, cluster.nodes["rabbit1"]
    fairway_password = v["vault_rabbitmq_fairway_password"]
    web_password = v["vault_rabbitmq_fairway_web_password"]
    config = fw.settings(
        amqp_url=f"amqps://fairway:{fairway_password}@{rabbit1.address}:5671/fairway",
        amqp_ca_file=str(cluster.ca_file),
        mongo_url=f"{private_mongo}cluster-inventory",
        rabbitmq_mgmt_url=f"http://fairway-web:{web_password}@{rabbit1.address}:15672",
        queue_type="quorum",
        web_host=GATEWAY,
        web_port=cluster.web_port,
        broker_auth_port=cluster.auth_port,
        # As the cluster inventory sets it: the broker-auth calls come from the proxy.
        broker_auth_networks=f"{cluster.proxy.address}/32",
    )
    fw.cli(config, "declare")
    fw.cli(config, "tenant", "create", "acme")
    creds = fw.cli(config, "device", "register", "acme", "boiler-7")
    web = f"{GATEWAY}:{cluster.web_port}"
    with fw.running(config, tmp_path, "web", "relay", "scheduler", web=web):
        # Each node asks the web app through the proxy's broker-auth server (HTTPS).
        rabbit2, rabbit3 = cluster.nodes["rabbit2"], cluster.nodes["rabbit3"]
        password = creds["password"]
        fw.publish_mqtt(
            rabbit2.address, 8883, "fairway", "boiler-7", password, "via-rabbit2",
            ca_file=str(cluster.ca_file),
        )  # fmt: skip
        on_rabbit3 = fw.settings(
            amqp_url=config.amqp_url.replace(rabbit1.address, rabbit3.address),
            amqp_ca_file=str(cluster.ca_file),
        )
        fw.publish_amqp(on_rabbit3, "boiler-7", password, "via-rabbit3")
        docs = fw.stored(config, "boiler-7", 2)
        assert {d["msg_id"] for d in docs} == {"via-rabbit2", "via-rabbit3"}
        assert fw.amqp_login_refused(on_rabbit3, "boiler-7", "not-its-password")
    out = rabbit1.ssh(
        "rabbitmqctl -q list_queues -p fairway name type policy members --formatter json"
    ).stdout
    queues = {q["name"]: q for q in json.loads(out)}
    tenant = queues["tenant.acme"]
    assert tenant["type"] == "quorum" and tenant["policy"] == "fairway-tenant-queues"
    assert sorted(tenant["members"]) == sorted(f"rabbit@{name}" for name in NODES)
    assert queues["ingest"]["type"] == "quorum"


def test_the_broker_auth_server_answers_the_brokers_only(cluster: Cluster) -> None:
    """From this machine (not a broker) the proxy's port 8443 refuses even /broker/."""
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    context.check_hostname = False  # called by address here; the brokers use the name
    request = urllib.request.Request(
        f"https://{cluster.proxy.address}:8443/broker/user", data=b"username=x&password=y"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10, context=context)
    assert refused.value.code == 403
