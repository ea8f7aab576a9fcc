"""``/api/users`` and ``/api/subscriptions``: people, roles and what they follow live.

Admins manage their tenant's users (admins and viewers); operators manage everyone.
Every change that affects what a user may see re-syncs their ``user.<id>``
exchange bindings before answering, so a revoked permission stops the feed at once.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

import web.models as models
from fairway.domain import permissions
from fairway.kernel.times import iso_z
from fairway.storage import accounts, mongo
from web.auth import (
    current_user,
    login_required,
    roles_required,
    tenant_scope,
    visible_device,
)
from web.broker import get_broker
from web.database import get_db
from web.errors import ApiError, bad_input
from web.openapi import operation

bp = Blueprint("users", __name__, url_prefix="/api")
MANAGERS = (accounts.OPERATOR, accounts.ADMIN)


def _user_json(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "user": doc["_id"],
        "tenant": doc.get("tenant"),
        "role": doc["role"],
        "enabled": bool(doc.get("enabled", True)),
        "subscriptions": doc.get("subscriptions", []),
        "created": iso_z(doc.get("created")),
    }


def _managed_user(user_id: str) -> dict[str, Any]:
    """A user the caller may manage, else 404 (other tenants) or 403 (operators)."""
    doc = accounts.user_document(get_db(), user_id)
    caller = current_user()
    if doc is None or not (caller.is_operator or doc.get("tenant") == caller.tenant):
        raise ApiError(404, "not_found", f"no user {user_id!r}")
    if doc["role"] == accounts.OPERATOR and not caller.is_operator:
        raise ApiError(403, "forbidden", "only operators manage operators")
    return doc


@bp.get("/users")
@roles_required(*MANAGERS)
@operation(query=models.TenantQuery, answer=models.Users, errors={404: ["not_found"]})
def list_users(query: models.TenantQuery) -> dict[str, Any]:
    """Users of the caller's tenant (operators: all, or ``?tenant=``)."""
    scope = tenant_scope(query.tenant)
    return {"users": [_user_json(d) for d in accounts.list_users(get_db(), scope)]}


@bp.post("/users")
@roles_required(*MANAGERS)
@operation(
    body=models.NewUser,
    status=201,
    answer=models.User,
    errors={400: ["reserved_id"], 404: ["not_found"], 409: ["exists"]},
)
def create_user(body: models.NewUser) -> tuple[dict[str, Any], int]:
    """Create a user; admins create admins and viewers of their tenant."""
    role = body.role
    caller = current_user()
    if role == accounts.OPERATOR and not caller.is_operator:
        raise ApiError(403, "forbidden", "only operators create operators")
    tenant = None if role == accounts.OPERATOR else tenant_scope(body.tenant)
    user_id, password = body.user, body.password
    db = get_db()
    try:
        accounts.create_user(db, user_id, password, role, tenant)
    except ValueError as exc:
        raise bad_input(exc) from None
    except LookupError as exc:
        raise ApiError(400, "bad_parameter", str(exc).strip("'\"")) from None
    except mongo.AlreadyExists as exc:
        raise ApiError(409, "exists", str(exc)) from None
    get_broker().run(lambda channel: permissions.sync_bindings(db, channel, user_id))
    return _user_json(accounts.user_document(db, user_id) or {}), 201


@bp.patch("/users/<user_id>")
@roles_required(*MANAGERS)
@operation(body=models.UserChange, answer=models.User, errors={404: ["not_found"]})
def update_user(user_id: str, body: models.UserChange) -> dict[str, Any]:
    """Change ``role`` or ``enabled``; disabling revokes tokens and live feeds at once."""
    doc = _managed_user(user_id)
    changes: dict[str, Any] = {}
    if body.role is not None:
        role = body.role
        if role == accounts.OPERATOR and not current_user().is_operator:
            raise ApiError(403, "forbidden", "only operators create operators")
        try:
            accounts.check_role(role, doc.get("tenant"))
        except ValueError as exc:
            raise ApiError(400, "bad_parameter", str(exc)) from None
        changes["role"] = role
    if body.enabled is not None:
        changes["enabled"] = body.enabled
    if not changes:
        raise ApiError(400, "bad_parameter", "send role and/or enabled")
    db = get_db()
    accounts.update_user(db, user_id, **changes)
    if changes.get("enabled") is False:
        accounts.revoke_api_tokens(db, user_id)
    get_broker().run(lambda channel: permissions.sync_bindings(db, channel, user_id))
    return _user_json(accounts.user_document(db, user_id) or {})


@bp.get("/subscriptions")
@login_required
@operation(answer=models.Subscriptions)
def list_subscriptions() -> dict[str, Any]:
    """Devices the caller follows live."""
    doc = accounts.user_document(get_db(), current_user().id) or {}
    return {"subscriptions": doc.get("subscriptions", []), "bindings": doc.get("bindings", [])}


def _set_subscription(device_id: str, follow: bool) -> dict[str, Any]:
    visible_device(device_id)
    db = get_db()
    user = current_user()
    doc = accounts.user_document(db, user.id) or {}
    subscriptions = set(doc.get("subscriptions", []))
    subscriptions = subscriptions | {device_id} if follow else subscriptions - {device_id}
    limit = current_app.config["FAIRWAY_SETTINGS"].api_page_max
    if len(subscriptions) > limit:
        raise ApiError(400, "too_many_subscriptions", f"at most {limit} devices can be followed")
    accounts.update_user(db, user.id, subscriptions=sorted(subscriptions))
    bindings = get_broker().run(lambda channel: permissions.sync_bindings(db, channel, user.id))
    return {"subscriptions": sorted(subscriptions), "bindings": bindings}


@bp.put("/subscriptions/<device_id>")
@login_required
@operation(
    answer=models.Subscriptions, errors={400: ["too_many_subscriptions"], 404: ["not_found"]}
)
def subscribe(device_id: str) -> dict[str, Any]:
    """Follow a device of the caller's tenant live (one bind per event kind)."""
    return _set_subscription(device_id, True)


@bp.delete("/subscriptions/<device_id>")
@login_required
@operation(answer=models.Subscriptions, errors={404: ["not_found"]})
def unsubscribe(device_id: str) -> dict[str, Any]:
    """Stop following a device."""
    return _set_subscription(device_id, False)
