"""Provisioning: tenants with their queues, fleets of devices, users with their bindings.

Used by the CLI, the web API, the demo, the deploy bootstrap and the tests alike, so
there is one way to make each of these.
"""

from __future__ import annotations

from pymongo.database import Database

from fairway.amqp.connection import blocking_channel
from fairway.domain import permissions
from fairway.kernel import topology
from fairway.kernel.ids import check_new_id
from fairway.kernel.settings import Settings
from fairway.storage import accounts, mongo, registry


def provision_tenant(settings: Settings, tenant_id: str, weight: int, max_backlog: int) -> None:
    """Declare the tenant's queue, then record the tenant (schedulers pick it up)."""
    check_new_id("tenant", tenant_id)
    with blocking_channel(settings, "fairway-provision") as channel:
        topology.declare(channel, settings)
        topology.tenant_queue(tenant_id, max_backlog, settings).declare(channel)
    db = mongo.connect(settings)
    mongo.ensure_indexes(db)
    registry.create_tenant(db, tenant_id, weight, max_backlog)


def ensure_devices(settings: Settings, by_tenant: dict[str, list[str]]) -> None:
    """Provision the tenants and devices of ``by_tenant`` that do not exist yet (idempotent)."""
    db = mongo.connect(settings)
    existing = {t.id for t in registry.list_tenants(db)}
    for tenant_id, device_ids in by_tenant.items():
        if tenant_id not in existing:
            provision_tenant(settings, tenant_id, 1, settings.tenant_max_backlog)
        known = {d.id for d in registry.list_devices(db, tenant_id)}
        for device_id in device_ids:
            if device_id not in known:
                key = registry.device_hash_key(settings.device_hash_key, settings.secret_key)
                registry.register_device(db, tenant_id, device_id, key)


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
