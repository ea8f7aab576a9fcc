"""Provisioning: tenants with their queues, devices with their bindings, users with theirs.

Used by the CLI, the web API, the demo, the deploy bootstrap and the tests alike, so
there is one way to make each of these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pymongo.database import Database

from fairway.amqp.connection import blocking_channel
from fairway.domain import permissions
from fairway.kernel import topology
from fairway.kernel.ids import check_new_id
from fairway.kernel.settings import Settings
from fairway.storage import accounts, mongo, registry

log = logging.getLogger(__name__)


def provision_tenant(
    settings: Settings,
    tenant_id: str,
    weight: int,
    max_backlog: int,
    max_rate: float | None = None,
    max_burst: float | None = None,
) -> None:
    """Declare the tenant's queues, then record the tenant (relays and schedulers pick it up).

    ``max_rate``/``max_burst``: the tenant's plan (None: the relay's defaults).

    ``ingest.<tenant>`` (its devices' messages, before the relay) and ``tenant.<tenant>``
    (its accepted readings, before the scheduler).
    """
    check_new_id("tenant", tenant_id)
    registry.check_plan(max_rate, max_burst)
    db = mongo.connect(settings)
    if registry.tenant_document(db, tenant_id) is not None:
        # Before the queues: redeclaring them with another max_backlog is a channel error.
        raise mongo.AlreadyExists(f"tenant {tenant_id!r} exists")
    with blocking_channel(settings, "fairway-provision") as channel:
        topology.declare(channel, settings)
        topology.tenant_ingest_queue(tenant_id, settings).declare(channel)
        topology.tenant_queue(tenant_id, max_backlog, settings).declare(channel)
    mongo.ensure_indexes(db)
    registry.create_tenant(db, tenant_id, weight, max_backlog, max_rate, max_burst)


def bind_devices(settings: Settings, devices: Iterable[tuple[str, str]]) -> int:
    """Bind each (tenant, device): ``telemetry`` -> ``ingest.<tenant>``, key ``<device>.*``.

    Idempotent; the tenants' ingest queues are declared first. Returns the bindings made.
    """
    count = 0
    declared: set[str] = set()
    with blocking_channel(settings, "fairway-provision") as channel:
        for tenant_id, device_id in devices:
            if tenant_id not in declared:
                topology.tenant_ingest_queue(tenant_id, settings).declare(channel)
                declared.add(tenant_id)
            topology.bind_device(channel, tenant_id, device_id)
            count += 1
    return count


def register_device(
    settings: Settings, db: Database, tenant_id: str, device_id: str
) -> dict[str, str]:
    """Register a device (credentials returned once), then bind it to ``ingest.<tenant>``.

    The record comes first, so a refused registration (bad id, unknown tenant, taken id)
    binds nothing. If the broker cannot be reached for the binding, the device is still
    registered and served: its messages take the shared ``ingest`` (through the alternate
    exchange) until ``fairway declare`` binds it.
    """
    key = registry.device_hash_key(settings.device_hash_key, settings.secret_key)
    credentials = registry.register_device(db, tenant_id, device_id, key)
    try:
        bind_devices(settings, [(tenant_id, device_id)])
    except Exception:
        log.warning(
            "device registered but not bound; run `fairway declare`",
            extra={"tenant": tenant_id, "device": device_id},
            exc_info=True,
        )
    return credentials


def bind_every_device(settings: Settings, db: Database) -> int:
    """(Re)bind every registered device (``fairway declare``; the upgrade path)."""
    return bind_devices(settings, ((d.tenant, d.id) for d in registry.list_devices(db)))


def ensure_devices(settings: Settings, by_tenant: dict[str, list[str]]) -> None:
    """Provision the tenants and devices of ``by_tenant`` that do not exist yet (idempotent)."""
    db = mongo.connect(settings)
    existing = {t.id for t in registry.list_tenants(db)}
    for tenant_id, device_ids in by_tenant.items():
        if tenant_id not in existing:
            provision_tenant(settings, tenant_id, 1, settings.tenant_max_backlog)
        known = {d.id for d in registry.list_devices(db, tenant_id)}
        new = [d for d in device_ids if d not in known]
        key = registry.device_hash_key(settings.device_hash_key, settings.secret_key)
        for device_id in new:
            registry.register_device(db, tenant_id, device_id, key)
        bind_devices(settings, [(tenant_id, d) for d in new])


def create_user(
    settings: Settings,
    db: Database,
    user_id: str,
    password: str,
    role: str,
    tenant_id: str | None,
    if_missing: bool = False,
) -> accounts.User | None:
    """Create a user and bind its live-notification exchange to what it may see.

    With ``if_missing`` an existing user is left as it is and None comes back;
    otherwise :class:`fairway.storage.mongo.AlreadyExists` is raised. Bad input raises
    ``ValueError`` or ``LookupError`` (unknown tenant).
    """
    try:
        user = accounts.create_user(db, user_id, password, role, tenant_id)
    except mongo.AlreadyExists:
        if if_missing:
            return None
        raise
    with blocking_channel(settings, "fairway-provision") as channel:
        permissions.sync_bindings(db, channel, user_id)
    return user
