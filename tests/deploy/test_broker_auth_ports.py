"""The broker's device-login URL and nginx's upstreams follow the app's own ports: the
shipped inventories rendered (no hosts: templates written on this machine) with
``fairway_settings.broker_auth_port`` at its default, 0 (served on the web port), another
port, and 0 with another web port, each checked against the port the app would listen on
(its rendered environment file read by Settings)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fairway.kernel.settings import Settings
from tests.deploy.testhosts import fresh_vault
from tests.deploy.tools import ANSIBLE_DIR, run, tool

ROLES = ANSIBLE_DIR / "roles"
# Each play imports its role for the variables only (every task skipped), then renders
# the role's template that names the ports into the output folder.
PLAYBOOK = [
    {"name": f"Render {role}", "hosts": group, "gather_facts": False,
     "tasks": [
         {"name": "Role variables", "ansible.builtin.import_role": {"name": role}, "when": False},
         {"name": "Render", "ansible.builtin.template": {
             "src": str(ROLES / role / "templates" / template),
             "dest": "{{ out }}/{{ inventory_hostname }}-" + template.removesuffix(".j2")}},
     ]}
    for group, role, template in [
        ("fairway", "fairway", "fairway.env.j2"),
        ("rabbitmq", "rabbitmq", "rabbitmq.conf.j2"),
        ("proxy", "nginx", "fairway.conf.j2"),
    ]
]  # fmt: skip

CASES = {
    "default": {},
    "zero": {"broker_auth_port": 0},
    "other": {"broker_auth_port": 9182},
    "zero-other-web": {"broker_auth_port": 0, "web_port": 9180},
}


def render(inventory: str, overlay: dict[str, Any], out: Path) -> dict[str, str]:
    """The inventory's fairway.env, rabbitmq.conf and nginx fairway.conf per host (file
    name -> text), its fairway_settings updated with ``overlay``."""
    group_vars = ANSIBLE_DIR / "inventories" / inventory / "group_vars/all/vars.yml"
    settings = {**yaml.safe_load(group_vars.read_text())["fairway_settings"], **overlay}
    playbook, variables = out / "render.yml", out / "vars.json"
    playbook.write_text(yaml.safe_dump(PLAYBOOK, sort_keys=False))
    variables.write_text(
        json.dumps(
            {
                **fresh_vault(),
                "fairway_settings": settings,
                "out": str(out),
                "ansible_python_interpreter": sys.executable,
            }
        )
    )
    result = run(
        [
            tool("ansible-playbook"),
            "-i",
            f"inventories/{inventory}/hosts.yml",
            "-c",
            "local",
            str(playbook),
            "-e",
            f"@{variables}",
        ],
        cwd=ANSIBLE_DIR,
        timeout=300,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_ROLES_PATH=str(ROLES),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return {p.name: p.read_text() for p in out.iterdir() if p.suffix in (".env", ".conf")}


def app_ports(env_file: str) -> tuple[int, int]:
    """(web port, port answering /broker/*) of the app reading this environment file."""
    env = dict(re.findall(r'^(FAIRWAY_[A-Z_]+)="(.*)"$', env_file, re.M))
    ports = {k: v for k, v in env.items() if k in ("FAIRWAY_WEB_PORT", "FAIRWAY_BROKER_AUTH_PORT")}
    settings = Settings.from_env(ports)
    return settings.web_port, settings.broker_auth_port or settings.web_port


def auth_urls(rabbitmq_conf: str) -> set[str]:
    """The auth_http.*_path URLs without their endpoint (one base URL when consistent)."""
    paths = re.findall(r"^auth_http\.\w+_path = (\S+)$", rabbitmq_conf, re.M)
    assert len(paths) == 4, rabbitmq_conf
    return {path.rsplit("/", 1)[0] for path in paths}


def upstream_ports(nginx_conf: str, name: str) -> set[int]:
    """The ports of the servers of one upstream block."""
    block = re.search(rf"upstream {name} \{{(.*?)\}}", nginx_conf, re.S)
    assert block, f"no upstream {name}"
    return {int(port) for port in re.findall(r"^\s*server \S+:(\d+);", block.group(1), re.M)}


@pytest.mark.parametrize("overlay", CASES.values(), ids=CASES.keys())
def test_single_host_broker_asks_the_apps_auth_port(
    overlay: dict[str, Any], tmp_path: Path
) -> None:
    files = render("single", overlay, tmp_path)
    web, auth = app_ports(files["fairway1-fairway.env"])
    assert auth == (overlay.get("broker_auth_port", 8082) or overlay.get("web_port", 8080))
    assert auth_urls(files["fairway1-rabbitmq.conf"]) == {f"http://127.0.0.1:{auth}/broker"}
    assert upstream_ports(files["fairway1-fairway.conf"], "fairway_web") == {web}


@pytest.mark.parametrize("overlay", CASES.values(), ids=CASES.keys())
def test_cluster_proxy_forwards_device_logins_to_the_apps_auth_port(
    overlay: dict[str, Any], tmp_path: Path
) -> None:
    files = render("cluster", overlay, tmp_path)
    ports = {app_ports(files[f"{app}-fairway.env"]) for app in ("app1", "app2")}
    ((web, auth),) = ports  # one setting for both app hosts
    assert auth == (overlay.get("broker_auth_port", 8082) or overlay.get("web_port", 8080))
    proxy = files["proxy1-fairway.conf"]
    assert upstream_ports(proxy, "fairway_web") == {web}
    assert upstream_ports(proxy, "fairway_broker_auth") == {auth}
    # Every broker asks the proxy's broker-auth server, the one that forwards there.
    broker_auth_server = proxy.split("upstream fairway_broker_auth")[1]
    listen = re.search(r"^\s*listen (\d+) ssl;$", broker_auth_server, re.M)
    assert listen, proxy
    for node in ("rabbit1", "rabbit2", "rabbit3"):
        assert auth_urls(files[f"{node}-rabbitmq.conf"]) == {
            f"https://fairway.example.com:{listen.group(1)}/broker"
        }
