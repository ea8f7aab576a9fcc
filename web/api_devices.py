"""``/api/devices``: the registry, each device's history and its rejections.

Every query is scoped to the caller's tenant (operators see all); a device of
another tenant answers 404, exactly like a device that does not exist.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, request
from pymongo import DESCENDING

from fairway.amqp import management
from fairway.kernel.times import iso_z
from fairway.storage import accounts, mongo, registry
from fairway.storage.rejections import list_rejections
from web.auth import (
    json_body,
    login_required,
    roles_required,
    tenant_scope,
    visible_device,
)
from web.database import get_db
from web.errors import ApiError
from web.params import limit_param, parse_time, time_param

bp = Blueprint("devices", __name__, url_prefix="/api/devices")
log = logging.getLogger(__name__)
MANAGERS = (accounts.OPERATOR, accounts.ADMIN)


def _device_json(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "device": doc["_id"],
        "tenant": doc["tenant"],
        "enabled": bool(doc.get("enabled", False)),
        "online": bool(doc.get("online", False)),
        "last_seen": iso_z(doc.get("last_seen")),
        "created": iso_z(doc.get("created")),
    }


@bp.get("")
@login_required
def list_devices() -> dict[str, Any]:
    """Devices of the caller's tenant (``?tenant=`` for operators)."""
    scope = tenant_scope(request.args.get("tenant"))
    query = {} if scope is None else {"tenant": scope}
    docs = get_db()[mongo.DEVICES].find(query, {"password_hash": 0}).sort("_id", 1)
    return {"devices": [_device_json(doc) for doc in docs]}


@bp.post("")
@roles_required(*MANAGERS)
def register_device() -> tuple[dict[str, Any], int]:
    """``{"device", "tenant"?}`` -> credentials, shown once."""
    body = json_body()
    device_id = body.get("device")
    tenant = tenant_scope(body.get("tenant"))
    if tenant is None:
        raise ApiError(400, "bad_parameter", "operators must name the tenant")
    if not isinstance(device_id, str):
        raise ApiError(400, "bad_parameter", "device must be a string id")
    try:
        credentials = registry.register_device(get_db(), tenant, device_id)
    except ValueError as exc:
        raise ApiError(400, "bad_parameter", str(exc)) from None
    except mongo.AlreadyExists as exc:
        raise ApiError(409, "exists", str(exc)) from None
    return credentials, 201


@bp.get("/<device_id>")
@login_required
def get_device(device_id: str) -> dict[str, Any]:
    """One device and its state."""
    return _device_json(visible_device(device_id))


def _close_connections(device_id: str, why: str) -> int:
    """Close the device's open broker connections so the change applies at once."""
    settings = current_app.config["FAIRWAY_SETTINGS"]
    try:
        return management.close_connections(
            settings.rabbitmq_mgmt_url, settings.vhost, device_id, why
        )
    except Exception:  # the registry change already holds; new logins are refused
        log.warning("could not close connections of %s", device_id, exc_info=True)
        return -1


@bp.post("/<device_id>/disable")
@roles_required(*MANAGERS)
def disable_device(device_id: str) -> dict[str, Any]:
    """Disable: new logins refused, open connections closed, relays refuse its messages."""
    visible_device(device_id)
    registry.set_device_enabled(get_db(), device_id, False)
    closed = _close_connections(device_id, "device disabled")
    return {**_device_json(visible_device(device_id)), "connections_closed": closed}


@bp.post("/<device_id>/enable")
@roles_required(*MANAGERS)
def enable_device(device_id: str) -> dict[str, Any]:
    """Enable again."""
    visible_device(device_id)
    registry.set_device_enabled(get_db(), device_id, True)
    return _device_json(visible_device(device_id))


@bp.post("/<device_id>/rotate")
@roles_required(*MANAGERS)
def rotate_credentials(device_id: str) -> dict[str, Any]:
    """A new password, shown once; connections with the old one are closed."""
    doc = visible_device(device_id)
    password = registry.rotate_device_password(get_db(), device_id)
    closed = _close_connections(device_id, "credentials rotated")
    return {
        "device": device_id,
        "tenant": doc["tenant"],
        "username": device_id,
        "password": password,
        "connections_closed": closed,
    }


@bp.get("/<device_id>/telemetry")
@login_required
def history(device_id: str) -> dict[str, Any]:
    """Readings newest first: ``from``, ``to``, ``stream``, ``limit``, ``cursor`` (next page)."""
    doc = visible_device(device_id)
    query: dict[str, Any] = {"tenant": doc["tenant"], "device": device_id}
    start, end = time_param("from"), time_param("to")
    if start and end and start > end:
        raise ApiError(400, "bad_parameter", "from must not be after to")
    span = {k: v for k, v in (("$gte", start), ("$lte", end)) if v is not None}
    if span:
        query["ts"] = span
    if stream := request.args.get("stream"):
        query["stream"] = stream
    if cursor := request.args.get("cursor"):
        query = {"$and": [query, _after_cursor(cursor)]}
    limit = limit_param()
    docs = list(
        get_db()[mongo.TELEMETRY]
        .find(query, {"tenant": 0})
        .sort([("ts", DESCENDING), ("_id", DESCENDING)])
        .limit(limit)
    )
    readings = [
        {
            "id": d["msg_id"],
            "stream": d["stream"],
            "ts": iso_z(d["ts"]),
            "received": iso_z(d.get("received")),
            "values": d["values"],
        }
        for d in docs
    ]
    last = docs[-1] if len(docs) == limit else None
    return {
        "device": device_id,
        "readings": readings,
        "next_cursor": f"{iso_z(last['ts'])}|{last['_id']}" if last else None,
    }


def _after_cursor(cursor: str) -> dict[str, Any]:
    """Readings strictly after ``<ts>|<_id>`` in (ts, _id) descending order."""
    raw_ts, _, last_id = cursor.partition("|")
    ts = parse_time("cursor", raw_ts)
    if not last_id:
        raise ApiError(400, "bad_parameter", "cursor is the next_cursor of the previous page")
    return {"$or": [{"ts": {"$lt": ts}}, {"ts": ts, "_id": {"$lt": last_id}}]}


@bp.get("/<device_id>/rejections")
@login_required
def rejections(device_id: str) -> dict[str, Any]:
    """The device's refused messages, newest first, with stable reason codes."""
    doc = visible_device(device_id)
    before = time_param("before")
    items = list_rejections(get_db(), doc["tenant"], device_id, limit_param(), before)
    return {"device": device_id, "rejections": [_rejection_json(r) for r in items]}


def _rejection_json(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k not in ("_id",)}
    out["at"] = iso_z(doc.get("at"))
    return out
