"""The ``mongodb`` role on three Debian test hosts shaped as the ``cluster`` inventory's
replica set, up to where MongoDB itself is needed: MongoDB's apt repository is not
reachable from this machine (nor from the hosts), so the package install fails there,
and with ``mongodb_install_packages: false`` the role writes the keyfile, mongod.conf
and the replica-set script, then stops where it would start mongod. docs/deploy.md
lists what is not exercised."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.testhosts import Host, TestNetwork, fresh_vault

MEMBERS = {"mongo1": 21, "mongo2": 22, "mongo3": 23}

pytestmark = pytest.mark.timeout(1200)  # slower when other work shares the machine


@pytest.fixture(scope="module")
def members(testnet: TestNetwork) -> Iterator[dict[str, Host]]:
    hosts = {name: testnet.add(name, octet) for name, octet in MEMBERS.items()}
    try:
        yield hosts
    finally:
        for name in hosts:
            testnet.remove(name)


@pytest.fixture
def inventory(testnet: TestNetwork, members: dict[str, Host], tmp_path: Path) -> Path:
    return testnet.copy_inventory("cluster", tmp_path / "cluster", fresh_vault())


def test_the_package_install_fails_on_the_unreachable_repository(
    testnet: TestNetwork, members: dict[str, Host], inventory: Path
) -> None:
    result = testnet.playbook(inventory, {}, "site.yml", "--limit", "mongodb")
    assert result.returncode != 0
    task, message = result.failure()
    assert task == "mongodb : Add MongoDB's package repository", result.tail()
    assert "Could not fetch signed_by key" in message, message
    assert result.tasks("ok").count("mongodb : Check the required secrets") == 3
    assert set(result.recap) == set(MEMBERS) and result.changed() == 0


def test_a_keyfile_mongod_would_refuse_fails_with_the_roles_message(
    testnet: TestNetwork, members: dict[str, Host], inventory: Path
) -> None:
    # What `secrets.token_urlsafe` gives, as the vault example used to suggest for every value.
    bad = {"vault_mongodb_keyfile_content": "dGhpcyBpcyBub3Q-base64_at-all"}
    result = testnet.playbook(inventory, bad, "site.yml", "--limit", "mongodb")
    assert result.returncode != 0
    task, message = result.failure()
    assert task == "mongodb : Check the keyfile's characters", result.tail()
    assert "must be 6 to 1024 base64 characters" in message


def test_without_the_package_the_role_configures_up_to_starting_mongod(
    testnet: TestNetwork, members: dict[str, Host], inventory: Path
) -> None:
    # What the package's maintainer scripts would have done first.
    for host in members.values():
        host.ssh("id mongodb || adduser --system --group --home /var/lib/mongodb mongodb")
    result = testnet.playbook(
        inventory, {"mongodb_install_packages": False}, "site.yml", "--limit", "mongodb"
    )
    assert result.returncode != 0
    task, message = result.failure()
    assert task == "mongodb : Enable and start mongod", result.tail()
    assert "mongod" in message
    addresses = [h.address for h in members.values()]
    for name, host in members.items():
        conf = yaml.safe_load(host.path("/etc/mongod.conf").read_text())
        assert conf["net"] == {"port": 27017, "bindIp": f"127.0.0.1,{host.address}"}
        assert conf["replication"] == {"replSetName": "rs0"}
        assert conf["security"] == {"authorization": "enabled", "keyFile": "/etc/mongod.keyfile"}
        assert conf["storage"]["dbPath"] == "/var/lib/mongodb"
        keyfile = host.ssh("stat -c '%U %a' /etc/mongod.keyfile").stdout.split()
        assert keyfile == ["mongodb", "400"], name
        script = host.path("/etc/mongod-fairway-init.js").read_text()
        assert f"const members = {json.dumps(addresses)};" in script
        assert f"const names = {json.dumps(list(MEMBERS))};" in script
        _parses_as_javascript(host.path("/etc/mongod-fairway-init.js"))


def _parses_as_javascript(script: Path) -> None:
    """``node --check``: the script mongosh would run is valid JavaScript."""
    node = shutil.which("node")
    assert node, "node is missing: scripts/browser.sh installs it (make test does)"
    result = subprocess.run(
        [node, "--check", str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
