"""docker-compose.yml checked by compose-go, the loader of `docker compose` itself.

This machine has the Docker client but no Compose plugin, so `deploy/compose-check` (a
few lines of Go around github.com/compose-spec/compose-go/v2) is built from the Go module
proxy and does what `docker compose config` does: schema, interpolation, references,
dependency cycles, profiles. It prints the resolved project, which the tests inspect.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from fairway.devtools.processes import free_port
from tests.deploy.tools import ROOT, run

CHECKER_SRC = ROOT / "deploy" / "compose-check"
INFRA = {"rabbitmq", "mongodb"}
MONITORING = {"prometheus", "grafana"}  # need no Fairway topology: they wait on nothing else
ONE_SHOT = {"declare", "bootstrap"}


def _go() -> str:
    found = shutil.which("go") or next(
        (
            p
            for p in ("/usr/local/go/bin/go", os.path.expanduser("~/sdk/go/bin/go"))
            if Path(p).exists()
        ),
        None,
    )
    assert found, "Go is needed to build deploy/compose-check (scripts/services.sh needs it too)"
    return found


@pytest.fixture(scope="module")
def compose_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("bin") / "compose-check"
    result = run(
        [_go(), "build", "-o", str(binary), "."],
        cwd=CHECKER_SRC,
        timeout=600,
        GOFLAGS="-buildvcs=false -mod=mod",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
    )
    assert result.returncode == 0, result.stderr
    return binary


def _filled_env(tmp_path: Path) -> Path:
    """.env.example with every empty secret given a value, as an operator would."""
    text = (ROOT / ".env.example").read_text()
    filled = re.sub(r"^(FAIRWAY_\w+)=$", r"\1=Test_value-0123456789", text, flags=re.M)
    path = tmp_path / "test.env"
    path.write_text(filled)
    return path


def _load(compose_check: Path, env_file: Path, *profiles: str) -> dict[str, Any]:
    result = check(compose_check, env_file, *profiles)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def project(compose_check: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _load(compose_check, _filled_env(tmp_path_factory.mktemp("env")), "demo")


def test_the_checker_refuses_an_invalid_file(compose_check: Path, tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text(
        "services:\n  a:\n    image: x\n    depends_on:\n      b:\n"
        "        condition: service_healthy\n"
    )
    result = run([str(compose_check), str(broken)], cwd=tmp_path)
    assert result.returncode != 0
    assert "undefined service" in result.stderr


def check(compose_check: Path, env_file: Path, *profiles: str) -> subprocess.CompletedProcess[str]:
    """Validate the compose file with ``env_file`` only: no ``FAIRWAY_*`` from this process.

    ``make test`` exports development values (``FAIRWAY_SECRET_KEY`` among them), which
    compose would otherwise take in place of the empty ones in the file.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRWAY_")}
    args = [str(compose_check), "-env-file", str(env_file)]
    for profile in profiles:
        args += ["-profile", profile]
    return subprocess.run(
        [*args, str(ROOT / "docker-compose.yml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


SECRETS = re.compile(r"^(FAIRWAY_\w*(?:SECRET_KEY|PASSWORD))=\s*$", re.MULTILINE)


@pytest.mark.parametrize("missing", SECRETS.findall((ROOT / ".env.example").read_text()))
def test_missing_secrets_stop_compose(compose_check: Path, tmp_path: Path, missing: str) -> None:
    """Every secret left empty in .env.example is required: compose refuses to start."""
    example = (ROOT / ".env.example").read_text()
    filled = SECRETS.sub(
        lambda m: m.group(0) if m.group(1) == missing else f"{m.group(1)}=x-{m.group(1)}", example
    )
    env_file = tmp_path / ".env"
    env_file.write_text(filled)
    result = check(compose_check, env_file)
    assert result.returncode != 0
    assert f"required variable {missing} is missing a value" in result.stderr


def test_every_process_of_the_system_is_there(project: dict[str, Any]) -> None:
    commands = {name: " ".join(s.get("command") or []) for name, s in project["services"].items()}
    for expected in (
        "fairway web",
        "fairway gateway",
        "fairway relay",
        "fairway scheduler",
        "fairway monitor",
        "fairway archiver",
        "fairway declare",
        "fairway simulate",
        "celery -A tasks worker -Q cpu",
        "celery -A tasks worker -Q maintenance",
        "celery -A tasks beat",
    ):
        assert any(c.startswith(expected) for c in commands.values()), expected
    assert project["services"]["relay"]["deploy"]["replicas"] == 2
    assert project["services"]["rabbitmq"]["image"].startswith("rabbitmq:")
    assert project["services"]["mongodb"]["image"].startswith("mongo:")


def test_start_order_follows_health(project: dict[str, Any]) -> None:
    services = project["services"]
    assert {n: d["condition"] for n, d in services["declare"]["depends_on"].items()} == {
        "rabbitmq": "service_healthy",
        "mongodb": "service_healthy",
    }
    for name, service in services.items():
        if name in INFRA | MONITORING or name == "declare":
            continue
        assert service["depends_on"]["declare"]["condition"] == "service_completed_successfully", (
            name
        )
        for dependency, spec in service["depends_on"].items():
            if dependency != "declare":
                assert spec["condition"] == "service_healthy", (name, dependency)
                assert "healthcheck" in services[dependency], dependency


def test_long_running_services_have_healthchecks_and_restart(project: dict[str, Any]) -> None:
    for name, service in project["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        assert service.get("restart") == "unless-stopped", name
        if name not in {"beat", "simulator"}:  # nothing waits on these two
            assert service["healthcheck"]["test"], name


def test_the_web_healthcheck_asks_both_of_its_ports(project: dict[str, Any]) -> None:
    """The pages' port and the broker-auth port the broker calls (rabbitmq.conf's URL):
    either one down makes the service unhealthy."""
    test = project["services"]["web"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "fairway-healthcheck"], test
    ports = {urlsplit(url).port for url in test[2:]}
    auth_url = _conf((ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text())["auth_http.user_path"]
    assert urlsplit(auth_url).port == 8082
    assert ports == {8080, 8082}, test
    assert "http://127.0.0.1:8080/healthz" in test


def test_the_healthcheck_fails_when_any_target_is_down() -> None:
    checker = [sys.executable, str(ROOT / "deploy/healthcheck.py")]
    with (
        socket.create_server(("127.0.0.1", 0)) as one,
        socket.create_server(("127.0.0.1", 0)) as two,
    ):
        up = [f"tcp://127.0.0.1:{s.getsockname()[1]}" for s in (one, two)]
        assert run([*checker, *up]).returncode == 0
    closed = free_port()
    with socket.create_server(("127.0.0.1", 0)) as one:
        listening = f"tcp://127.0.0.1:{one.getsockname()[1]}"
        assert run([*checker, listening, f"tcp://127.0.0.1:{closed}"]).returncode == 1
        assert run([*checker, f"tcp://127.0.0.1:{closed}", listening]).returncode == 1
    assert run(checker).returncode == 2


def test_simulator_only_in_the_demo_profile(compose_check: Path, tmp_path: Path) -> None:
    without = _load(compose_check, _filled_env(tmp_path))
    assert "simulator" not in without["services"]


def test_state_lives_in_named_volumes(project: dict[str, Any]) -> None:
    assert {"rabbitmq-data", "mongodb-data", "beat-data"} <= set(project["volumes"])
    mounts = {
        (name, v["target"]): v["type"]
        for name, s in project["services"].items()
        for v in s.get("volumes", [])
    }
    assert mounts[("rabbitmq", "/var/lib/rabbitmq")] == "volume"
    assert mounts[("mongodb", "/data/db")] == "volume"


def test_rabbitmq_definitions_hold_the_service_accounts(project: dict[str, Any]) -> None:
    definitions = json.loads(project["configs"]["rabbitmq-definitions"]["content"])
    users = {u["name"]: u for u in definitions["users"]}
    assert set(users) == {"fairway", "fairway-web", "admin"}
    assert all(u["password"] == "Test_value-0123456789" for u in users.values())
    assert {(p["user"], p["vhost"]) for p in definitions["permissions"]} == {
        (name, "fairway") for name in users
    }
    for config in ("rabbitmq-conf", "rabbitmq-plugins"):
        assert Path(project["configs"][config]["file"]).is_file()


def _conf(text: str) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def test_rabbitmq_configuration_mirrors_the_local_node() -> None:
    compose = _conf((ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text())
    script = (ROOT / "scripts/services.sh").read_text()
    heredoc = script.split('cat >"$RABBITMQ_CONFIG_FILE" <<EOF', 1)[1].split("\nEOF", 1)[0]
    local = _conf(heredoc)
    same = [k for k in local if k.startswith(("auth_", "mqtt.exchange", "mqtt.allow_anonymous"))]
    assert len(same) >= 10
    for key in same:
        # The web app's own broker-auth port (FAIRWAY_BROKER_AUTH_PORT's default).
        expected = local[key].replace("$WEB_AUTH_URL", "http://web:8082/broker")
        assert compose.get(key) == expected, key
    plugins = re.search(r'RABBIT_PLUGINS="([^"]+)"', script).group(1).split(",")  # type: ignore[union-attr]
    enabled = (ROOT / "deploy/rabbitmq/enabled_plugins").read_text().strip().strip("[].").split(",")
    assert sorted(enabled) == sorted(plugins)


def test_the_broker_is_reached_from_outside_over_tls_only(project: dict[str, Any]) -> None:
    """AMQPS and MQTTS are published; plain AMQP, MQTT and management on loopback only."""
    published = {
        int(p["target"]): (p.get("host_ip") or "", str(p["published"]))
        for p in project["services"]["rabbitmq"]["ports"]
    }
    assert published[5671] == ("", "5671")
    assert published[8883] == ("", "8883")
    for plain in (5672, 1883, 15672):
        assert published[plain][0] == "127.0.0.1", plain
    for name, service in project["services"].items():
        for port in service.get("ports", []):
            if int(port["target"]) in (5672, 1883):
                assert port.get("host_ip") == "127.0.0.1", name


def test_the_broker_certificate_is_mounted_where_its_configuration_reads_it(
    project: dict[str, Any],
) -> None:
    volumes = {v["target"]: v for v in project["services"]["rabbitmq"]["volumes"]}
    tls = volumes["/etc/rabbitmq/tls"]
    assert tls["type"] == "bind" and tls["read_only"] is True
    assert tls["source"] == str(ROOT / "deploy" / "tls")
    conf = _conf((ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text())
    assert conf["listeners.ssl.default"] == "5671"
    assert conf["mqtt.listeners.ssl.default"] == "8883"
    for key, name in (
        ("cacertfile", "ca.pem"),
        ("certfile", "server.pem"),
        ("keyfile", "server-key.pem"),
    ):
        assert conf[f"ssl_options.{key}"] == f"/etc/rabbitmq/tls/{name}", key
    assert "deploy/tls/" in (ROOT / ".gitignore").read_text().splitlines()


def test_prometheus_scrapes_every_process_and_grafana_reads_it(project: dict[str, Any]) -> None:
    """Every service serving FAIRWAY_METRICS_PORT is a Prometheus target by its compose
    name; the configuration and the dashboard are mounted where the images read them."""
    import yaml

    services = project["services"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["port"] == 9100, job["job_name"]
            targets |= set(sd["names"])
        for static in job.get("static_configs", []):
            targets |= {t.rsplit(":", 1)[0] for t in static["targets"]}
    serving = {
        name
        for name, s in services.items()
        if (s.get("environment") or {}).get("FAIRWAY_METRICS_PORT") == "9100"
        and name not in ONE_SHOT | {"beat", "simulator"}
    }
    assert {"relay", "scheduler", "monitor", "archiver", "gateway", "web"} <= serving
    assert serving <= targets, serving - targets
    assert targets <= set(services), targets - set(services)
    queues = next(j for j in config["scrape_configs"] if j["job_name"] == "rabbitmq-queues")
    assert queues["params"] == {"family": ["queue_coarse_metrics"], "vhost": ["fairway"]}

    mounts = {
        (name, v["target"]): (v["source"], v.get("read_only"))
        for name, s in services.items()
        for v in s.get("volumes", [])
    }
    prom = mounts[("prometheus", "/etc/prometheus/prometheus.yml")]
    assert prom == (str(ROOT / "deploy/prometheus/prometheus.yml"), True)
    for target, source in (
        ("/etc/grafana/provisioning", "deploy/grafana/provisioning"),
        ("/var/lib/grafana/dashboards", "deploy/grafana/dashboards"),
    ):
        assert mounts[("grafana", target)] == (str(ROOT / source), True)
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/fairway.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert (source["uid"], source["url"]) == ("prometheus", "http://prometheus:9090")
    for name in MONITORING:
        assert all(p.get("host_ip") == "127.0.0.1" for p in services[name]["ports"]), name
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def _cpu_worker(project: dict[str, Any]) -> tuple[int, dict[str, str]]:
    """The cpu worker's --concurrency and its FAIRWAY_JOBS_* environment."""
    cpu = next(
        s
        for s in project["services"].values()
        if " ".join(s.get("command") or []).startswith("celery -A tasks worker -Q cpu")
    )
    command = cpu["command"]
    env = {
        k: "" if v is None else str(v)
        for k, v in cpu["environment"].items()
        if k.startswith("FAIRWAY_JOBS_")
    }
    return int(command[command.index("--concurrency") + 1]), env


def test_the_cpu_workers_processes_are_declared_to_fair_dispatch(project: dict[str, Any]) -> None:
    # Fair dispatch bounds released jobs by FAIRWAY_JOBS_CPU_PROCESSES and keeps one of
    # them for a tenant with none running: it must be what the cpu worker runs.
    from fairway.kernel.settings import Settings

    processes, env = _cpu_worker(project)
    assert int(env["FAIRWAY_JOBS_CPU_PROCESSES"]) == processes == 2
    assert env["FAIRWAY_JOBS_RESERVED_PROCESSES"] == ""  # unset: derived
    assert Settings.from_env(env).reserved_processes == 1


# (.env lines, cpu processes, reserve in effect)
POOLS = {
    # One process, as before the reserve existed: every process starts, none kept.
    "one-worker": ({"FAIRWAY_CPU_WORKERS": "1"}, 1, 0),
    "reserve-set": ({"FAIRWAY_CPU_WORKERS": "3", "FAIRWAY_JOBS_RESERVED_PROCESSES": "2"}, 3, 2),
}


@pytest.mark.parametrize(("lines", "processes", "reserved"), POOLS.values(), ids=POOLS.keys())
def test_every_process_starts_with_the_cpu_workers_an_operator_sets(
    compose_check: Path, tmp_path: Path, lines: dict[str, str], processes: int, reserved: int
) -> None:
    from fairway.kernel.settings import Settings

    env_file = _filled_env(tmp_path)
    text = re.sub(r"^FAIRWAY_CPU_WORKERS=.*\n", "", env_file.read_text(), flags=re.M)
    env_file.write_text(text + "".join(f"{k}={v}\n" for k, v in lines.items()))
    declared, env = _cpu_worker(_load(compose_check, env_file))
    assert declared == processes
    # Settings are built by every process (relay, scheduler, gateway too), not only workers.
    assert Settings.from_env(env).reserved_processes == reserved
