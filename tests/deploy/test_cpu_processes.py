"""Fair job dispatch is told every cpu worker process of the deployment: the shipped
inventories rendered (no hosts: templates written on this machine), each host's worker-cpu
units read for their ``-c``, summed over the app hosts, and compared with the
FAIRWAY_JOBS_CPU_PROCESSES every host's environment file declares; per-host counts and
concurrencies set in the inventory count too, and an operator's own value is kept."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fairway.kernel.settings import Settings
from tests.deploy.testhosts import fresh_vault
from tests.deploy.tools import ANSIBLE_DIR, run, tool

TEMPLATES = ANSIBLE_DIR / "roles" / "fairway" / "templates"
PLAYBOOK = [
    {"name": "Render fairway", "hosts": "fairway", "gather_facts": False,
     "tasks": [
         {"name": "Role variables", "ansible.builtin.import_role": {"name": "fairway"},
          "when": False},
         *({"name": f"Render {template}", "ansible.builtin.template": {
             "src": str(TEMPLATES / template),
             "dest": "{{ out }}/{{ inventory_hostname }}-" + template.removesuffix(".j2")}}
           for template in ("fairway.env.j2", "units.yml.j2")),
     ]}
]  # fmt: skip


def render(
    inventory: str, tmp_path: Path, host_vars: dict[str, dict[str, Any]], settings: dict[str, Any]
) -> dict[str, tuple[dict[str, str], list[dict[str, Any]]]]:
    """Per app host: (its environment file's FAIRWAY_* values, its units), the inventory
    copied with ``host_vars`` added to its hosts ("all": every host) and ``settings``
    added to its fairway_settings."""
    source = ANSIBLE_DIR / "inventories" / inventory
    copy = tmp_path / "inventory"
    shutil.copytree(source, copy)
    hosts = yaml.safe_load((copy / "hosts.yml").read_text())
    for name, values in host_vars.items():
        if name == "all":
            hosts["all"].setdefault("vars", {}).update(values)
            continue
        for group in hosts["all"]["children"].values():
            if name in (group.get("hosts") or {}):
                group["hosts"][name] = {**(group["hosts"][name] or {}), **values}
    (copy / "hosts.yml").write_text(yaml.safe_dump(hosts))
    group_vars = yaml.safe_load((copy / "group_vars/all/vars.yml").read_text())
    out = tmp_path / "out"
    out.mkdir()
    playbook, variables = tmp_path / "render.yml", tmp_path / "vars.json"
    playbook.write_text(yaml.safe_dump(PLAYBOOK, sort_keys=False))
    variables.write_text(
        json.dumps(
            {
                **fresh_vault(),
                "fairway_settings": {**group_vars["fairway_settings"], **settings},
                "out": str(out),
                "ansible_python_interpreter": sys.executable,
            }
        )
    )
    result = run(
        [tool("ansible-playbook"), "-i", str(copy / "hosts.yml"), "-c", "local", str(playbook),
         "-e", f"@{variables}"],
        cwd=ANSIBLE_DIR,
        timeout=300,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    found = {}
    for env_file in out.glob("*-fairway.env"):
        host = env_file.name.removesuffix("-fairway.env")
        env = dict(re.findall(r'^(FAIRWAY_[A-Z_]+)="(.*)"$', env_file.read_text(), re.M))
        units = yaml.safe_load((out / f"{host}-units.yml").read_text()) or []
        found[host] = (env, units)
    return found


def cpu_processes(units: list[dict[str, Any]]) -> int:
    """The pool processes of this host's worker-cpu units (each one's -c/--concurrency)."""
    total = 0
    for unit in units:
        if unit["name"] != "worker-cpu":
            continue
        concurrency = re.search(r"(?:-c|--concurrency)[ =](\d+)", unit["command"])
        assert concurrency, f"{unit['unit']} runs one process per core: {unit['command']}"
        total += int(concurrency.group(1))
    return total


# (inventory, host variables, fairway_settings added, processes expected in all)
CASES = {
    "single-default": ("single", {}, {}, 2),
    "single-concurrency-3": ("single", {"all": {"fairway_cpu_worker_concurrency": 3}}, {}, 3),
    "single-two-workers": ("single", {"fairway1": {"fairway_process_counts": {"worker-cpu": 2}}},
                           {}, 4),
    "cluster-default": ("cluster", {}, {}, 4),
    # app1 from the role's defaults, app2 its own: each host counts the other's right.
    "cluster-per-host": ("cluster", {"app2": {"fairway_cpu_worker_concurrency": 3}}, {}, 5),
    "cluster-app1-per-host": (
        "cluster", {"app1": {"fairway_cpu_worker_concurrency": 4,
                             "fairway_process_counts": {"worker-cpu": 2}}}, {}, 10),
    "cluster-no-cpu-on-app2": (
        "cluster", {"app2": {"fairway_process_counts": {"beat": 0, "worker-cpu": 0}}}, {}, 2),
    "single-concurrency-1": ("single", {"all": {"fairway_cpu_worker_concurrency": 1}}, {}, 1),
    # No worker-cpu in the group (cpu workers run elsewhere): nothing derived, the default.
    "cluster-no-cpu": (
        "cluster", {"app1": {"fairway_process_counts": {"worker-cpu": 0}},
                    "app2": {"fairway_process_counts": {"beat": 0, "worker-cpu": 0}}}, {}, 0),
}  # fmt: skip


@pytest.mark.parametrize(("inventory", "host_vars", "settings", "expected"), CASES.values(),
                         ids=CASES.keys())  # fmt: skip
def test_declared_cpu_processes_are_every_hosts_workers(
    inventory: str,
    host_vars: dict[str, dict[str, Any]],
    settings: dict[str, Any],
    expected: int,
    tmp_path: Path,
) -> None:
    hosts = render(inventory, tmp_path, host_vars, settings)
    assert hosts
    running = sum(cpu_processes(units) for _, units in hosts.values())
    assert running == expected
    for host, (env, _) in hosts.items():
        assert env.get("FAIRWAY_JOBS_CPU_PROCESSES") == (str(running) if running else None), host
        jobs = {k: v for k, v in env.items() if k.startswith("FAIRWAY_JOBS_")}
        pool = Settings.from_env(jobs)  # the start check passes with what is declared
        # One process kept for a quiet tenant, but where there is one process only.
        assert pool.reserved_processes == (0 if running == 1 else 1), host


def test_an_operators_own_count_is_kept(tmp_path: Path) -> None:
    hosts = render("cluster", tmp_path, {}, {"jobs_cpu_processes": 6})
    assert {env["FAIRWAY_JOBS_CPU_PROCESSES"] for env, _ in hosts.values()} == {"6"}
