"""Ansible: syntax and lint of every playbook and role, and the fairway role applied for
real to this machine (local connection, throwaway prefix, unit files rendered but not
enabled), then again with nothing changed, then scaled down."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.tools import ANSIBLE_DIR, ROOT, run, tool

PLAYBOOKS = [
    ("inventories/single/hosts.yml", "site.yml"),
    ("inventories/cluster/hosts.yml", "site.yml"),
    ("localhost,", "check-local.yml"),
]
RECAP = re.compile(
    r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


@pytest.mark.parametrize(("inventory", "playbook"), PLAYBOOKS)
def test_syntax_check(inventory: str, playbook: str) -> None:
    result = run(
        [tool("ansible-playbook"), "--syntax-check", "-i", inventory, playbook], cwd=ANSIBLE_DIR
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("inventory", [PLAYBOOKS[0][0], PLAYBOOKS[1][0]])
def test_the_app_play_runs_alone_by_its_tag(inventory: str) -> None:
    """Upgrades run ``--tags fairway`` first (new apps before the brokers' new settings:
    docs/deploy.md, "Rolling upgrades"): only the fairway role's tasks are in it."""
    result = run(
        [
            tool("ansible-playbook"),
            "--list-tasks",
            "--tags",
            "fairway",
            "-i",
            inventory,
            "site.yml",
        ],
        cwd=ANSIBLE_DIR,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tasks = re.findall(r"^\s{6}(\S+) : ", result.stdout, re.M)
    assert "Declare the topology and indexes" in result.stdout
    assert tasks and set(tasks) == {"fairway"}, result.stdout


def test_ansible_lint_is_clean() -> None:
    result = run([tool("ansible-lint"), "--offline", "--nocolor"], cwd=ANSIBLE_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failure(s), 0 warning(s)" in result.stdout + result.stderr


def test_wheel_carries_every_package_and_asset(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("fairway", "ingest", "scheduler", "web", "tasks"):
        if (ROOT / package / "__init__.py").exists():
            assert f"{package}/__init__.py" in names, package
    for assets in ("web/templates", "web/static"):
        for path in (ROOT / assets).rglob("*") if (ROOT / assets).is_dir() else []:
            if path.is_file() and "__pycache__" not in path.parts:
                assert str(path.relative_to(ROOT)) in names, f"{path} is not in the wheel"


def _apply(prefix: Path, variables: dict[str, Any]) -> tuple[str, int]:
    vars_file = prefix / "vars.json"
    vars_file.write_text(json.dumps(variables))
    result = run(
        [
            tool("ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "check-local.yml",
            "-e",
            f"@{vars_file}",
        ],
        cwd=ANSIBLE_DIR,
        timeout=600,
        ANSIBLE_NOCOLOR="1",
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    recap = RECAP.search(result.stdout)
    assert recap, result.stdout[-2000:]
    assert recap.group(4) == "0"
    return result.stdout, int(recap.group(2))


def test_fairway_role_applies_then_changes_nothing(wheel: Path, tmp_path: Path) -> None:
    variables: dict[str, Any] = {
        "ansible_python_interpreter": sys.executable,
        "fairway_wheel": str(wheel),
        "fairway_python": getattr(sys, "_base_executable", sys.executable),
        "fairway_prefix": str(tmp_path / "opt"),
        "fairway_config_dir": str(tmp_path / "etc"),
        "fairway_state_dir": str(tmp_path / "var"),
        "fairway_systemd_dir": str(tmp_path / "systemd"),
        "fairway_journald_dir": str(tmp_path / "journald"),
        "fairway_install_packages": False,
        "fairway_create_user": False,
        "fairway_user": pwd.getpwuid(os.getuid()).pw_name,
        "fairway_group": grp.getgrgid(os.getgid()).gr_name,
        "fairway_systemd_enable": False,
        "fairway_declare": False,
        "fairway_secret_key": 'quote"and\\backslash-0123456789',
        "fairway_settings": {
            "amqp_url": "amqp://fairway:pw@rabbit1:5672/fairway",
            "queue_type": "quorum",
        },
    }
    _, changed = _apply(tmp_path, variables)
    assert changed > 0

    _, changed_again = _apply(tmp_path, variables)
    assert changed_again == 0

    fairway = tmp_path / "opt/venv/bin/fairway"
    assert fairway.exists()
    help_text = run([str(fairway), "--help"]).stdout
    assert "scheduler" in help_text and "relay" in help_text
    env = (tmp_path / "etc/fairway.env").read_text()
    assert 'FAIRWAY_QUEUE_TYPE="quorum"' in env
    assert 'FAIRWAY_SECRET_KEY="quote\\"and\\\\backslash-0123456789"' in env
    units = sorted(p.name for p in (tmp_path / "systemd").glob("fairway-*.service"))
    assert "fairway-relay-1.service" in units and "fairway-relay-2.service" in units
    assert "fairway-worker-cpu-1.service" in units and "fairway-beat-1.service" in units
    relay = (tmp_path / "systemd/fairway-relay-2.service").read_text()
    assert f"ExecStart={tmp_path}/opt/venv/bin/fairway relay" in relay
    assert "Restart=always" in relay and "StandardError=journal" in relay
    ports = [
        re.search(r"FAIRWAY_METRICS_PORT=(\d+)", (tmp_path / "systemd" / u).read_text()).group(1)  # type: ignore[union-attr]
        for u in units
    ]
    assert len(set(ports)) == len(ports), "two units on one host share a metrics port"

    # Scale down: one relay, no beat here; their units disappear.
    variables["fairway_process_counts"] = {"relay": 1, "beat": 0}
    _, changed_down = _apply(tmp_path, variables)
    assert changed_down > 0
    remaining = {p.name for p in (tmp_path / "systemd").glob("fairway-*.service")}
    assert "fairway-relay-2.service" not in remaining and "fairway-beat-1.service" not in remaining
    assert "fairway-relay-1.service" in remaining
