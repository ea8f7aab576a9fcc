"""``/api/tenants``: operators provision tenants; everyone else sees their own."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

import web.models as models
from fairway.provision import provision_tenant
from fairway.provision_bulk import BulkProvisioner
from fairway.storage import accounts, mongo, registry
from web.auth import login_required, roles_required, tenant_scope
from web.database import get_db
from web.errors import ApiError, bad_input
from web.openapi import operation

bp = Blueprint("tenants", __name__, url_prefix="/api/tenants")
PLAN = ("max_rate", "max_burst")  # fields a PATCH may set to null: the defaults again


def _tenant_json(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenant": doc["_id"],
        "weight": doc["weight"],
        "max_backlog": doc["max_backlog"],
        "retention_days": doc.get("retention_days"),
        "max_rate": doc.get("max_rate"),
        "max_burst": doc.get("max_burst"),
    }


@bp.get("")
@login_required
@operation(answer=models.Tenants)
def list_tenants() -> dict[str, Any]:
    """Tenants the caller may see."""
    scope = tenant_scope(None)
    return {"tenants": [_tenant_json(doc) for doc in registry.tenant_documents(get_db(), scope)]}


@bp.post("")
@roles_required(accounts.OPERATOR)
@operation(
    body=models.NewTenant,
    status=201,
    answer=models.Tenant,
    errors={400: ["reserved_id", "bad_parameter"], 409: ["exists"]},
)
def create_tenant(body: models.NewTenant) -> tuple[dict[str, Any], int]:
    """Provision a tenant (queue first, then record)."""
    settings = current_app.config["FAIRWAY_SETTINGS"]
    tenant_id = body.tenant
    backlog = settings.tenant_max_backlog if body.max_backlog is None else body.max_backlog
    try:
        provision_tenant(settings, tenant_id, body.weight, backlog, body.max_rate, body.max_burst)
    except ValueError as exc:
        raise bad_input(exc) from None
    except mongo.AlreadyExists as exc:
        raise ApiError(409, "exists", str(exc)) from None
    return _tenant_json(registry.tenant_document(get_db(), tenant_id) or {}), 201


@bp.post("/bulk")
@roles_required(accounts.OPERATOR)
@operation(body=models.NewTenants, answer=models.Provisioned)
def create_tenants(body: models.NewTenants) -> dict[str, Any]:
    """Provision many tenants and their devices in one batch (one broker connection).

    Every tenant and device gets a `result`: `created`, `exists` (left as it is, so the
    same batch can be sent again) or `refused` with a stable `reason` (`reserved_id`,
    `duplicate`, `exists` for a device of another tenant, `tenant_refused`,
    `queue_mismatch`); one refused item does not stop the others. Created devices'
    passwords are in the answer, once.
    """
    settings = current_app.config["FAIRWAY_SETTINGS"]
    with BulkProvisioner(settings, get_db(), "fairway-web-provision") as bulk:
        return bulk.provision(body.tenants).as_json()


@bp.get("/<tenant_id>")
@login_required
@operation(answer=models.Tenant, errors={404: ["not_found"]})
def get_tenant(tenant_id: str) -> dict[str, Any]:
    """One tenant."""
    tenant_scope(tenant_id)
    doc = registry.tenant_document(get_db(), tenant_id)
    if doc is None:
        raise ApiError(404, "not_found", f"no tenant {tenant_id!r}")
    return _tenant_json(doc)


@bp.patch("/<tenant_id>")
@roles_required(accounts.OPERATOR)
@operation(
    body=models.TenantChange,
    answer=models.Tenant,
    errors={400: ["bad_parameter"], 404: ["not_found"]},
)
def update_tenant(tenant_id: str, body: models.TenantChange) -> dict[str, Any]:
    """Change ``weight`` (DRR share), ``retention_days`` (readings kept) or the plan,
    ``max_rate``/``max_burst`` (relays apply it within FAIRWAY_TENANT_REFRESH_S; null:
    back to FAIRWAY_TENANT_RATE / FAIRWAY_TENANT_BURST)."""
    changes: dict[str, Any] = body.model_dump(exclude_none=True)
    sent = body.model_dump(exclude_unset=True)
    unset = tuple(k for k in PLAN if k in sent and sent[k] is None)
    if not changes and not unset:
        raise ApiError(
            400, "bad_parameter", "send weight, retention_days, max_rate and/or max_burst"
        )
    try:
        updated = registry.update_tenant(get_db(), tenant_id, changes, unset)
    except ValueError as exc:
        raise bad_input(exc) from None
    if updated is None:
        raise ApiError(404, "not_found", f"no tenant {tenant_id!r}")
    return _tenant_json(updated)
