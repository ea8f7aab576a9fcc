"""deploy/grafana/dashboards/fairway.json is a valid dashboard whose every query names
metrics that exist: Fairway's own, defined in the code, or the few that Prometheus and
RabbitMQ's exporter provide. A renamed metric breaks this test, not the dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from scheduler.metrics import TENANT_GAUGES

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/fairway.json"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
PACKAGES = ("fairway", "ingest", "scheduler", "monitor", "archiver", "gateway", "web", "tasks")

# Not Fairway's: `up` (Prometheus, per target) and RabbitMQ's rabbitmq_prometheus plugin
# (names checked against RabbitMQ 3.10's /metrics and /metrics/detailed; 4.1 keeps them).
EXTERNAL = {
    "up",
    "rabbitmq_alarms_memory_used_watermark",
    "rabbitmq_alarms_free_disk_space_watermark",
    "rabbitmq_alarms_file_descriptor_limit",
    "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_disk_space_available_bytes",
    "rabbitmq_disk_space_available_limit_bytes",
    "rabbitmq_connections",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_detailed_queue_messages",
}
DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|TenantHistogram|TenantCounter)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\""
)
# What in a PromQL expression is not a metric name: strings, label matchers, ranges,
# label lists of by/without/on/ignoring/group_left/group_right, Grafana variables.
NOT_NAMES = (
    re.compile(r'"(?:[^"\\]|\\.)*"'),
    re.compile(r"\{[^}]*\}"),
    re.compile(r"\[[^\]]*\]"),
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
    re.compile(r"\$\w+"),
)
KEYWORDS = {"bool", "and", "or", "unless", "offset", "group_left", "group_right", "inf", "nan"}
IDENTIFIER = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def defined_metrics() -> dict[str, str]:
    """Every metric Fairway's code defines: name -> kind (Counter, Gauge, Histogram...)."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for kind, name in DEFINITION.findall(path.read_text(encoding="utf-8")):
                found[name] = kind
    found.update(dict.fromkeys(TENANT_GAUGES.names, "Gauge"))  # read at scrape time
    return found


def exposed(defined: dict[str, str]) -> set[str]:
    """The series names Prometheus sees for those definitions (prometheus_client's rules)."""
    names: set[str] = set()
    for name, kind in defined.items():
        if kind in ("Counter", "TenantCounter"):
            base = name.removesuffix("_total")
            names |= {f"{base}_total", f"{base}_created"}
        elif kind in ("Histogram", "Summary", "TenantHistogram"):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    for pattern in NOT_NAMES:
        expr = pattern.sub(" ", expr)
    return {n for n in IDENTIFIER.findall(expr) if n not in KEYWORDS}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


def test_the_dashboard_is_valid_json_with_unique_panels_on_the_provisioned_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "fairway" and dashboard["title"] == "Fairway"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)) > 10
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    source = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert source["datasources"][0]["uid"] == "prometheus"


def test_every_metric_the_dashboard_queries_exists() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    known = exposed(defined_metrics()) | EXTERNAL
    queried = set().union(*(metric_names(q) for q in queries(dashboard)))
    missing = sorted(queried - known)
    assert not missing, f"the dashboard queries metrics nothing defines: {missing}"
    # What the issue asks the dashboard to show is there.
    for name in (
        "fairway_relay_accepted_total",
        "fairway_scheduler_stored_total",
        "fairway_scheduler_backlog",
        "fairway_scheduler_lag_seconds_bucket",
        "fairway_scheduler_weight",
        "fairway_relay_rejected_total",
        "fairway_scheduler_db_up",
        "rabbitmq_alarms_memory_used_watermark",
    ):
        assert name in queried, name
    assert queried >= EXTERNAL, EXTERNAL - queried  # no stale allowance


def test_the_jobs_the_dashboard_names_are_scraped() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    jobs = [j["job_name"] for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]]
    for expr in queries(dashboard):
        for op, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', expr):
            pattern = value if op == "=~" else re.escape(value)
            assert any(re.fullmatch(pattern, job) for job in jobs), expr


def test_the_checker_finds_names_and_refuses_unknown_ones() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (tenant, le) (rate(fairway_scheduler_lag_seconds_bucket"
        '{tenant=~"a|b"}[$__rate_interval]))) / ignoring (tenant) group_left '
        "sum(fairway_nonexistent_total) > bool 0"
    )
    names = metric_names(expr)
    assert names == {"fairway_scheduler_lag_seconds_bucket", "fairway_nonexistent_total"}
    known = exposed(defined_metrics())
    assert "fairway_scheduler_lag_seconds_bucket" in known
    assert "fairway_nonexistent_total" not in known
    assert "fairway_web_logins_total" in known  # defined outside a metrics.py module
