"""The ``fairway`` command: administration and every long-running process.

Each process command imports its process's module inside the command, so an
administration command does not load Flask, Twisted or Celery; every process is
started the same way, by its module's ``run(settings)``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import orjson
from pydantic import ValidationError

from fairway.amqp.connection import blocking_channel, declare_topology
from fairway.kernel import log, topology
from fairway.kernel.settings import Settings, SettingsError
from fairway.provision import (
    bind_every_device,
    create_user,
    ensure_devices,
    provision_tenant,
    register_device,
)
from fairway.provision_bulk import Batch, BatchTooLarge, Report, provision_many
from fairway.storage import accounts, backfill, mongo, registry
from fairway.storage import rejections as rejection_store


def _emit(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Fairway: fair, exactly-once-in-effect IoT telemetry ingestion."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        # A configuration mistake is a usage error: the message, no traceback, exit 2.
        click.echo(f"error: {exc}", err=True)
        ctx.exit(2)
    log.setup(settings.log_level)
    ctx.obj = settings


@main.group()
def tenant() -> None:
    """Provision and list tenants."""


@tenant.command("create")
@click.argument("tenant_id")
@click.option("--weight", default=1, show_default=True, help="DRR weight (share of writes).")
@click.option("--max-backlog", default=None, type=int, help="Bound of the tenant queue.")
@click.option(
    "--max-rate",
    default=None,
    type=float,
    help="Accepted readings per second in each relay, 0: unlimited [FAIRWAY_TENANT_RATE].",
)
@click.option(
    "--max-burst", default=None, type=float, help="Burst of --max-rate [FAIRWAY_TENANT_BURST]."
)
@click.pass_obj
def tenant_create(
    settings: Settings,
    tenant_id: str,
    weight: int,
    max_backlog: int | None,
    max_rate: float | None,
    max_burst: float | None,
) -> None:
    """Create TENANT_ID with its queue ``tenant.<id>``."""
    try:
        provision_tenant(
            settings,
            tenant_id,
            weight,
            max_backlog or settings.tenant_max_backlog,
            max_rate,
            max_burst,
        )
    except (ValueError, mongo.AlreadyExists) as exc:
        _fail(str(exc))
    _emit({"tenant": tenant_id, "weight": weight, "queue": topology.tenant_queue_name(tenant_id)})


@tenant.command("create-many")
@click.argument("path", type=click.File("rb"))
@click.pass_obj
def tenant_create_many(settings: Settings, path: Any) -> None:
    """Provision the tenants and devices of PATH (``-``: stdin), idempotently.

    PATH holds ``{"tenants": [{"tenant": ..., "weight": ..., "max_backlog": ...,
    "devices": [...]}]}`` (the body of ``POST /api/tenants/bulk``), provisioned in batches
    of FAIRWAY_PROVISION_BATCH_MAX over one broker connection. Progress on stderr; on
    stdout every item's result (created devices' passwords, shown once) and the counts.
    Run it again after an interruption: what exists is reported as ``exists``.
    """
    try:
        items = Batch.model_validate_json(path.read()).tenants
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        _fail(f"{getattr(path, 'name', 'the file')}: {where}: {first['msg']}")
    started = time.monotonic()

    def report(so_far: Report, total: int) -> None:
        counts = so_far.counts()["tenants"]
        click.echo(
            f"{len(so_far.tenants)}/{total} tenants ({counts['created']} created,"
            f" {counts['exists']} existed, {counts['refused']} refused),"
            f" {len(so_far.devices)} devices, {time.monotonic() - started:.1f} s",
            err=True,
        )

    try:
        done = provision_many(settings, mongo.connect(settings), items, report)
    except BatchTooLarge as exc:
        _fail(str(exc))
    _emit(done.as_json())


@tenant.command("list")
@click.pass_obj
def tenant_list(settings: Settings) -> None:
    """List tenants as JSON."""
    _emit([asdict(t) for t in registry.list_tenants(mongo.connect(settings))])


@tenant.command("set-weight")
@click.argument("tenant_id")
@click.argument("weight", type=int)
@click.pass_obj
def tenant_set_weight(settings: Settings, tenant_id: str, weight: int) -> None:
    """Change a tenant's DRR weight (schedulers apply it within their refresh period)."""
    try:
        if not registry.set_tenant_weight(mongo.connect(settings), tenant_id, weight):
            _fail(f"unknown tenant {tenant_id!r}")
    except ValueError as exc:
        _fail(str(exc))
    _emit({"tenant": tenant_id, "weight": weight})


@tenant.command("set-rate")
@click.argument("tenant_id")
@click.argument("rate")
@click.option(
    "--max-burst", "--burst", "burst", default=None, type=float, help="Its burst, in readings."
)
@click.pass_obj
def tenant_set_rate(settings: Settings, tenant_id: str, rate: str, burst: float | None) -> None:
    """Set TENANT_ID's plan: RATE accepted readings per second in each relay (0: unlimited;
    ``default``: FAIRWAY_TENANT_RATE and FAIRWAY_TENANT_BURST again). Relays apply it within
    FAIRWAY_TENANT_REFRESH_S; with several relays the tenant gets up to that many times RATE
    (docs/security.md, "Tenant rate")."""
    changes: dict[str, float] = {}
    unset: tuple[str, ...] = ()
    if rate == "default":
        if burst is not None:
            _fail("--max-burst cannot go with the default rate")
        unset = ("max_rate", "max_burst")
    else:
        try:
            changes["max_rate"] = float(rate)
        except ValueError:
            _fail(f"RATE must be a number or 'default', not {rate!r}")
        if burst is not None:
            changes["max_burst"] = burst
        else:
            unset = ("max_burst",)
    try:
        doc = registry.update_tenant(mongo.connect(settings), tenant_id, changes, unset)
    except ValueError as exc:
        _fail(str(exc))
    if doc is None:
        _fail(f"unknown tenant {tenant_id!r}")
    assert doc is not None
    _emit({"tenant": tenant_id, "max_rate": doc.get("max_rate"), "max_burst": doc.get("max_burst")})


@tenant.command("remove")
@click.argument("tenant_id")
@click.pass_obj
def tenant_remove(settings: Settings, tenant_id: str) -> None:
    """Remove TENANT_ID's record: schedulers stop consuming its queue within their refresh
    period, relays refuse its devices as ``unknown_tenant``. Its queues (with any
    readings still in them), devices and stored data are kept (docs/architecture.md,
    "Removing a tenant")."""
    if not registry.remove_tenant(mongo.connect(settings), tenant_id):
        _fail(f"unknown tenant {tenant_id!r}")
    _emit({"tenant": tenant_id, "removed": True, "queue": topology.tenant_queue_name(tenant_id)})


@main.group()
def device() -> None:
    """Register, list, enable and disable devices."""


@device.command("register")
@click.argument("tenant_id")
@click.argument("device_id")
@click.pass_obj
def device_register(settings: Settings, tenant_id: str, device_id: str) -> None:
    """Register DEVICE_ID under TENANT_ID, bound to its ingest queue; prints its credentials."""
    try:
        _emit(register_device(settings, mongo.connect(settings), tenant_id, device_id))
    except (ValueError, LookupError, mongo.AlreadyExists) as exc:
        _fail(str(exc).strip("'\""))


@device.command("list")
@click.option("--tenant", "tenant_id", default=None, help="Only this tenant's devices.")
@click.pass_obj
def device_list(settings: Settings, tenant_id: str | None) -> None:
    """List devices as JSON."""
    _emit([asdict(d) for d in registry.list_devices(mongo.connect(settings), tenant_id)])


def _set_enabled(settings: Settings, device_id: str, enabled: bool) -> None:
    if not registry.set_device_enabled(mongo.connect(settings), device_id, enabled):
        _fail(f"unknown device {device_id!r}")
    _emit({"device": device_id, "enabled": enabled})


@device.command("disable")
@click.argument("device_id")
@click.pass_obj
def device_disable(settings: Settings, device_id: str) -> None:
    """Disable DEVICE_ID: relays refuse its messages within the registry cache TTL."""
    _set_enabled(settings, device_id, False)


@device.command("enable")
@click.argument("device_id")
@click.pass_obj
def device_enable(settings: Settings, device_id: str) -> None:
    """Enable DEVICE_ID again."""
    _set_enabled(settings, device_id, True)


@main.group()
def user() -> None:
    """Create and list users of the web app."""


@user.command("create")
@click.argument("user_id")
@click.option(
    "--role",
    type=click.Choice(accounts.ROLES),
    default=accounts.VIEWER,
    show_default=True,
)
@click.option("--tenant", "tenant_id", default=None, help="Required unless --role operator.")
@click.option("--if-missing", is_flag=True, help="Succeed without change if the user exists.")
@click.password_option(envvar="FAIRWAY_NEW_USER_PASSWORD", help="Prompted when not given.")
@click.pass_obj
def user_create(
    settings: Settings,
    user_id: str,
    role: str,
    tenant_id: str | None,
    if_missing: bool,
    password: str,
) -> None:
    """Create USER_ID and bind its live-notification exchange."""
    db = mongo.connect(settings)
    try:
        created = create_user(settings, db, user_id, password, role, tenant_id, if_missing)
    except (mongo.AlreadyExists, ValueError, LookupError) as exc:
        _fail(str(exc).strip("'\""))
    if created is None:
        _emit({"user": user_id, "created": False})
        return
    _emit({"user": created.id, "role": created.role, "tenant": created.tenant, "created": True})


@user.command("list")
@click.option("--tenant", "tenant_id", default=None)
@click.pass_obj
def user_list(settings: Settings, tenant_id: str | None) -> None:
    """List users as JSON (no password hashes)."""
    docs = accounts.list_users(mongo.connect(settings), tenant_id)
    _emit([{"user": d["_id"], "role": d["role"], "tenant": d.get("tenant")} for d in docs])


@main.command("declare")
@click.pass_obj
def declare(settings: Settings) -> None:
    """Declare the shared AMQP topology, bind every registered device, index the database.

    Idempotent. Also the upgrade to per-tenant ingest queues: it declares each tenant's
    ``ingest.<tenant>`` and binds every device to it (see docs/architecture.md).
    """
    try:
        declare_topology(settings)
    except Exception as exc:
        if "alternate-exchange" in str(exc):
            _fail(
                f"{exc}: `telemetry` was declared by an earlier version without its "
                "alternate exchange; delete the exchange `telemetry` and run "
                "`fairway declare` again (docs/architecture.md, Per-tenant ingest)"
            )
        raise
    db = mongo.connect(settings)
    mongo.ensure_indexes(db)
    bound = bind_every_device(settings, db)
    _emit({"declared": [name for name, _ in topology.EXCHANGES], "devices_bound": bound})


@main.group()
def migrate() -> None:
    """One-time data migrations (idempotent, resumable: rerun after an interruption)."""


@migrate.command("backfill-hk")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 10_000))
@click.pass_obj
def migrate_backfill_hk(settings: Settings, batch_size: int) -> None:
    """Give readings stored before hour keys existed their ``hk``.

    Also folds them into device_state and marks their hours for rollup. One scan of
    telemetry per pass; progress on stderr, a JSON summary on stdout.
    """

    def report(totals: dict[str, int]) -> None:
        click.echo(
            f"pass {totals['passes']}: {totals['readings']} readings keyed, "
            f"{totals['hours']} device-hours marked for rollup",
            err=True,
        )

    _emit(backfill.backfill_hour_keys(mongo.connect(settings), batch_size, report))


@main.group()
def rejections() -> None:
    """Refused messages: counts by reason, and replay once the cause is fixed."""


@rejections.command("list")
@click.option("--tenant", "tenant_id", default=None)
@click.option("--device", default=None)
@click.option("--reason", default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.pass_obj
def rejections_list(
    settings: Settings, tenant_id: str | None, device: str | None, reason: str | None, limit: int
) -> None:
    """Archived rejections, newest first, as JSON (ids for ``replay``)."""
    from fairway.domain import replay

    db = mongo.connect(settings)
    docs = rejection_store.list_rejections(
        db, tenant_id, device, limit, reason=reason, unowned=bool(tenant_id and device)
    )
    _emit(
        [
            {
                "id": d["_id"],
                "at": d.get("at"),
                "tenant": d.get("tenant"),
                "device": d.get("device"),
                "reason": d.get("reason"),
                "detail": d.get("detail"),
                "replayable": replay.blocker(d) is None,
                "replayed": bool(d.get("replay")),
            }
            for d in docs
        ]
    )


@rejections.command("counts")
@click.option("--tenant", "tenant_id", default=None)
@click.option("--hours", default=24, show_default=True, type=click.IntRange(1, 7 * 24))
@click.pass_obj
def rejections_counts(settings: Settings, tenant_id: str | None, hours: int) -> None:
    """Rejections by reason per tenant over the last HOURS, as JSON."""
    from datetime import UTC, datetime, timedelta

    since = datetime.now(UTC) - timedelta(hours=hours - 1)
    found = rejection_store.reason_counts(mongo.connect(settings), tenant_id, since)
    totals: dict[str, dict[str, int]] = {}
    for tenant_key, by_hour in found.items():
        out = totals.setdefault(tenant_key or "(no tenant)", {})
        for counter in by_hour.values():
            for reason, n in counter.items():
                out[reason] = out.get(reason, 0) + n
    _emit(totals)


@rejections.command("replay")
@click.argument("ids", nargs=-1, required=True)
@click.option("--by", default="cli", show_default=True, help="Recorded as who replayed.")
@click.pass_obj
def rejections_replay(settings: Settings, ids: tuple[str, ...], by: str) -> None:
    """Re-submit archived rejections through the relay's checks, each at most once."""
    from fairway.domain import replay

    db = mongo.connect(settings)
    results = []
    with blocking_channel(settings, "fairway-replay") as channel:
        for rejection_id in dict.fromkeys(ids):
            doc = rejection_store.get_rejection(db, rejection_id)
            if doc is None:
                results.append(replay.Outcome(rejection_id, "refused", "not_found", "no such id"))
                continue
            try:
                results.append(replay.replay(db, channel, settings, doc, by))
            except replay.ReplayNotTaken as exc:
                results.append(replay.Outcome(rejection_id, "refused", "queue_full", str(exc)))
    _emit([r.as_json() for r in results])
    if any(r.outcome != "sent" for r in results):
        sys.exit(1)


# -- processes: each module's ``run(settings)`` serves until SIGTERM, then drains ----
@main.command("relay")
@click.pass_obj
def relay(settings: Settings) -> None:
    """Run an auth/relay consumer on ``ingest`` until SIGTERM."""
    from ingest.relay import run

    run(settings)


@main.command("scheduler")
@click.option("--sink", type=click.Choice(["mongo", "null"]), default="mongo", show_default=True)
@click.pass_obj
def scheduler(settings: Settings, sink: str) -> None:
    """Run the fair scheduler over every tenant queue until SIGTERM."""
    from scheduler.service import run

    run(settings, sink=sink)


@main.command("web")
@click.option("--threads", default=8, show_default=True)
@click.pass_obj
def web_server(settings: Settings, threads: int) -> None:
    """Serve the web app (and the broker's auth endpoints) with waitress."""
    from web.server import run

    run(settings, threads)


@main.command("gateway")
@click.pass_obj
def gateway(settings: Settings) -> None:
    """Serve live notifications to browsers (Twisted, Server-Sent Events)."""
    from gateway.service import run

    run(settings)


@main.command("monitor")
@click.pass_obj
def monitor(settings: Settings) -> None:
    """Track device online status and evaluate alert rules; publish status/alert events."""
    from monitor.service import run

    run(settings)


@main.command("archiver")
@click.pass_obj
def archiver(settings: Settings) -> None:
    """Keep rejected messages queryable per device (``rejected`` -> ``rejections``)."""
    from archiver.service import run

    run(settings)


@main.command("simulate")
@click.option("--tenants", default=3, show_default=True)
@click.option("--devices", default=5, show_default=True, help="Devices per tenant.")
@click.option("--rate", default=500.0, show_default=True, help="Readings per second in total.")
@click.option(
    "--batch",
    default=1,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Readings per message (device batches: a JSON array; 1: one reading object).",
)
@click.option("--noisy", multiple=True, help="TENANT:FACTOR, e.g. sim01:100.")
@click.option("--duration", default=10.0, show_default=True, help="Seconds to publish.")
@click.option(
    "--provision/--no-provision",
    default=True,
    show_default=True,
    help="Create missing simulated tenants and devices first.",
)
@click.pass_obj
def simulate(
    settings: Settings,
    tenants: int,
    devices: int,
    rate: float,
    batch: int,
    noisy: tuple[str, ...],
    duration: float,
    provision: bool,
) -> None:
    """Publish simulated readings with confirms; print a JSON summary."""
    from fairway.devtools import simulator

    noisy_factors: dict[str, float] = {}
    for item in noisy:
        name, _, factor = item.partition(":")
        try:
            noisy_factors[name] = float(factor)
        except ValueError:
            _fail(f"--noisy takes TENANT:FACTOR, not {item!r}")
    by_tenant = {t: simulator.device_ids(t, devices) for t in simulator.tenant_ids(tenants)}
    if provision:
        ensure_devices(settings, by_tenant)
    summary = simulator.Simulator(
        settings,
        simulator.weighted_devices(by_tenant, noisy_factors),
        rate=rate,
        duration=duration,
        batch=batch,
    ).run()
    click.echo(simulator.summary_json(summary))


@main.command("demo")
@click.option(
    "--short",
    is_flag=True,
    help="Only a relay, a scheduler and simulated devices for --duration s, then what landed.",
)
@click.option("--duration", default=10.0, show_default=True, help="Seconds to publish (--short).")
@click.option("--serve", is_flag=True, hidden=True)  # the default since issue 13; kept for scripts
@click.option("--password", envvar="FAIRWAY_DEMO_PASSWORD", default="fairway-demo-password")
@click.option(
    "--logs",
    type=click.Path(file_okay=False, path_type=Path),
    default=".services/logs",
    show_default=True,
    help="Where each process logs (demo-<process>.log).",
)
@click.option("--flood-rate", default=2500.0, show_default=True, help="Noisy tenant's wave, /s.")
@click.option("--second-rate", default=2000.0, show_default=True, help="Second tenant's, /s.")
@click.option("--wave-every", default=120.0, show_default=True, help="Seconds between waves.")
@click.pass_obj
def demo(
    settings: Settings,
    short: bool,
    duration: float,
    serve: bool,
    password: str,
    logs: Path,
    flood_rate: float,
    second_rate: float,
    wave_every: float,
) -> None:
    """The whole product with simulated devices until Ctrl-C (``make demo``).

    Checks the signing key, the web and gateway ports and the services first; then
    runs every process, prints the dashboard URL and the demo users, and stops
    everything cleanly on Ctrl-C. ``--short``: the ten-second pipeline run.
    """
    import dataclasses

    from fairway.devtools.demo import DemoError, DemoOptions, run_demo, serve_demo

    try:
        if short:
            run_demo(settings, duration)
            return
        options = DemoOptions(password=password, logs=logs)
        options.plan = dataclasses.replace(
            options.plan, flood_rate=flood_rate, second_rate=second_rate, wave_every_s=wave_every
        )
        sys.exit(serve_demo(settings, options))
    except DemoError as exc:
        click.echo("the demo cannot start:", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(2)


@main.command("demo-fleet", hidden=True)
@click.option("--tenants", default=3, show_default=True)
@click.option("--devices", default=5, show_default=True, help="Steady devices per tenant.")
@click.option("--period", default=2.0, show_default=True, help="Seconds between readings.")
@click.option("--flood-rate", default=2500.0, show_default=True)
@click.option("--second-rate", default=2000.0, show_default=True)
@click.option("--wave", default=8.0, show_default=True, help="Seconds a wave lasts.")
@click.option("--wave-every", default=120.0, show_default=True)
@click.option("--first-wave", default=20.0, show_default=True)
@click.option("--misbehave-every", default=15.0, show_default=True)
@click.pass_obj
def demo_fleet(
    settings: Settings,
    tenants: int,
    devices: int,
    period: float,
    flood_rate: float,
    second_rate: float,
    wave: float,
    wave_every: float,
    first_wave: float,
    misbehave_every: float,
) -> None:
    """The demo's simulated fleet (``fairway demo`` starts it): publish until SIGTERM."""
    from fairway.devtools import fleet, simulator

    plan = fleet.FleetPlan(
        steady={t: simulator.device_ids(t, devices) for t in simulator.tenant_ids(tenants)},
        period_s=period,
        flood_rate=flood_rate,
        second_rate=second_rate,
        wave_s=wave,
        wave_every_s=wave_every,
        first_wave_s=first_wave,
        misbehave_every_s=misbehave_every,
    )
    fleet.run(settings, plan)
