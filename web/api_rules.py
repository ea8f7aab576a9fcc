"""``/api/rules``: threshold alert rules of a tenant (admins write, everyone reads)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

import web.models as models
from fairway.domain import alerts
from fairway.kernel.times import iso_z
from fairway.storage import accounts, rules
from web.auth import login_required, roles_required, tenant_scope, visible_device
from web.database import get_db
from web.errors import ApiError
from web.openapi import operation

bp = Blueprint("rules", __name__, url_prefix="/api/rules")


def _rule_json(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k != "_id"}
    out["rule"] = doc["_id"]
    out["created"] = iso_z(doc.get("created"))
    return out


@bp.get("")
@login_required
@operation(query=models.TenantQuery, answer=models.Rules, errors={404: ["not_found"]})
def list_rules(query: models.TenantQuery) -> dict[str, Any]:
    """The tenant's rules (operators: ``?tenant=``)."""
    tenant = tenant_scope(query.tenant)
    if tenant is None:
        raise ApiError(400, "bad_parameter", "operators must name the tenant")
    return {"rules": [_rule_json(r) for r in rules.list_rules(get_db(), tenant)]}


@bp.post("")
@roles_required(accounts.OPERATOR, accounts.ADMIN)
@operation(
    body=models.NewRule,
    status=201,
    answer=models.Rule,
    errors={404: ["not_found"], 409: ["too_many_rules"]},
    links={
        "DeleteRule": {
            "operationId": "delete_rule",
            "parameters": {"rule_id": "$response.body#/rule"},
        }
    },
)
def create_rule(body: models.NewRule) -> tuple[dict[str, Any], int]:
    """A threshold alert with hysteresis, on one device or every device of the tenant."""
    tenant = tenant_scope(body.tenant)
    device = body.device
    if device is not None:
        tenant = visible_device(device, tenant)["tenant"]
    if tenant is None:
        raise ApiError(400, "bad_parameter", "operators must name the tenant or a device")
    try:
        rule = alerts.create_rule(
            get_db(),
            tenant,
            device,
            body.metric,
            body.op,
            body.threshold,
            body.hysteresis,
            max_rules=current_app.config["FAIRWAY_SETTINGS"].max_rules_per_tenant,
        )
    except alerts.TooManyRules as exc:
        raise ApiError(409, exc.reason, str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise ApiError(400, "bad_parameter", str(exc)) from None
    return _rule_json(rule), 201


@bp.delete("/<rule_id>")
@roles_required(accounts.OPERATOR, accounts.ADMIN)
@operation(answer=models.Deleted, errors={404: ["not_found"]})
def delete_rule(rule_id: str) -> dict[str, str]:
    """Delete a rule of the caller's tenant."""
    db = get_db()
    doc = db[rules.RULES].find_one({"_id": rule_id}, {"tenant": 1})
    tenant = tenant_scope(doc["tenant"] if doc else None) if doc else None
    if doc is None or tenant is None or not rules.delete_rule(db, tenant, rule_id):
        raise ApiError(404, "not_found", f"no rule {rule_id!r}")
    return {"deleted": rule_id}
