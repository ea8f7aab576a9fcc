"""``fairway demo``: the pipeline end to end on the local services, in one command."""

from __future__ import annotations

import time
from pathlib import Path

import click

from fairway.devtools import processes, simulator
from fairway.kernel.settings import Settings
from fairway.provision import create_user, ensure_devices
from fairway.storage import mongo


def run_demo(settings: Settings, duration: float) -> None:
    """Relay + scheduler + 3 tenants x 5 devices (one noisy), then show what landed."""
    by_tenant = {t: simulator.device_ids(t, 5) for t in simulator.tenant_ids(3)}
    ensure_devices(settings, by_tenant)
    db = mongo.connect(settings)
    before = _counts(db, by_tenant)
    logs = Path(".services/logs")
    logs.mkdir(parents=True, exist_ok=True)
    children = [
        processes.start(["relay"], settings, logs / "demo-relay.log"),
        processes.start(["scheduler"], settings, logs / "demo-scheduler.log"),
    ]
    try:
        click.echo(f"publishing for {duration:.0f} s: sim01 is noisy (10x)", err=True)
        summary = simulator.Simulator(
            settings,
            simulator.weighted_devices(by_tenant, {"sim01": 10}),
            rate=1000,
            duration=duration,
        ).run()
        click.echo(simulator.summary_json(summary))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            landed = sum(_counts(db, by_tenant).values()) - sum(before.values())
            if landed >= summary.readings:
                break
            time.sleep(0.5)
    finally:
        for child in children:
            processes.stop(child)
    after = _counts(db, by_tenant)
    for tenant, count in after.items():
        click.echo(f"{tenant}: {count - before[tenant]} new readings stored ({count} in all)")
    latest = db[mongo.TELEMETRY].find({}, {"_id": 1, "ts": 1, "values": 1}).sort("ts", -1).limit(3)
    for doc in latest:
        click.echo(f"  {doc['_id']}  {doc['ts']:%H:%M:%S.%f}  {doc['values']}")


SERVED_ROLES = ("relay", "scheduler", "monitor", "archiver", "gateway", "web")
DEMO_USERS = (("demo-admin", "admin", "sim01"), ("demo-viewer", "viewer", "sim01"))


def serve_demo(settings: Settings, password: str, rate: float) -> None:
    """Run every process and a gentle simulator until Ctrl-C; print where to log in."""
    by_tenant = {t: simulator.device_ids(t, 5) for t in simulator.tenant_ids(3)}
    ensure_devices(settings, by_tenant)
    db = mongo.connect(settings)
    for user_id, role, tenant in DEMO_USERS:
        create_user(settings, db, user_id, password, role, tenant, if_missing=True)
    logs = Path(".services/logs")
    logs.mkdir(parents=True, exist_ok=True)
    children = [processes.start([r], settings, logs / f"demo-{r}.log") for r in SERVED_ROLES]
    simulate = ["simulate", "--no-provision", "--rate", str(rate), "--duration", "86400"]
    children.append(processes.start(simulate, settings, logs / "demo-simulate.log"))
    url = f"http://{settings.web_host}:{settings.web_port}/"
    click.echo(f"dashboard: {url}  (users demo-admin and demo-viewer, password {password!r})")
    click.echo(f"process logs: {logs}/demo-*.log; Ctrl-C stops everything", err=True)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(1)
        click.echo("a demo process exited; see its log", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        for child in reversed(children):
            processes.stop(child)


def _counts(db, by_tenant: dict[str, list[str]]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {t: db[mongo.TELEMETRY].count_documents({"tenant": t}) for t in by_tenant}
