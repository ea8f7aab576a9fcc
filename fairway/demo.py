"""``fairway demo``: the pipeline end to end on the local services, in one command."""

from __future__ import annotations

import time
from pathlib import Path

import click

from fairway import processes, store
from fairway.cli import ensure_simulated
from fairway.settings import Settings
from ingest import simulator


def run_demo(settings: Settings, duration: float) -> None:
    """Relay + scheduler + 3 tenants x 5 devices (one noisy), then show what landed."""
    by_tenant = {t: simulator.device_ids(t, 5) for t in simulator.tenant_ids(3)}
    ensure_simulated(settings, by_tenant)
    db = store.connect(settings)
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
            if landed >= summary.confirmed:
                break
            time.sleep(0.5)
    finally:
        for child in children:
            processes.stop(child)
    after = _counts(db, by_tenant)
    for tenant, count in after.items():
        click.echo(f"{tenant}: {count - before[tenant]} new readings stored ({count} in all)")
    latest = db[store.TELEMETRY].find({}, {"_id": 1, "ts": 1, "values": 1}).sort("ts", -1).limit(3)
    for doc in latest:
        click.echo(f"  {doc['_id']}  {doc['ts']:%H:%M:%S.%f}  {doc['values']}")


def _counts(db, by_tenant: dict[str, list[str]]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {t: db[store.TELEMETRY].count_documents({"tenant": t}) for t in by_tenant}
