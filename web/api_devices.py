"""``/api/devices``: the registry, each device's history and its rejections.

Every query is scoped to the caller's tenant (operators see all); a device of
another tenant answers 404, exactly like a device that does not exist.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, current_app

import web.broker_auth as broker_auth
import web.models as models
from fairway.amqp import management
from fairway.domain.presence import presence
from fairway.kernel.contract import split_reading_id
from fairway.kernel.ids import RESERVED_ID, is_reserved_id
from fairway.kernel.times import iso_z
from fairway.provision import register_device as provision_device
from fairway.provision_bulk import BulkProvisioner
from fairway.storage import (
    accounts,
    device_state,
    mongo,
    quarantine,
    registry,
    rollups,
    telemetry,
)
from fairway.storage.rejections import list_rejections
from web.auth import (
    current_user,
    login_required,
    roles_required,
    tenant_scope,
    visible_device,
)
from web.database import get_db
from web.errors import ApiError, bad_input
from web.metrics import count_refusal
from web.openapi import operation

bp = Blueprint("devices", __name__, url_prefix="/api/devices")
log = logging.getLogger(__name__)
MANAGERS = (accounts.OPERATOR, accounts.ADMIN)


def _quarantine_json(record: quarantine.Quarantine | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "active": record.holds(datetime.now(UTC).timestamp()),
        "since": iso_z(datetime.fromtimestamp(record.since, UTC)),
        "until": iso_z(datetime.fromtimestamp(record.until, UTC)),
        "offences": record.offences,
        "reason": record.reason,
    }


def _device_json(
    doc: dict[str, Any],
    state: dict[str, Any] | None,
    held: quarantine.Quarantine | None = None,
) -> dict[str, Any]:
    """A registry entry with its maintained state (``device_state``; never a telemetry scan).

    Online and last seen combine the monitor's connections and the newest stored reading
    (:mod:`fairway.domain.presence`).
    """
    state = state or {}
    latest = state.get("latest") or {}
    window = current_app.config["FAIRWAY_SETTINGS"].device_online_window_s
    seen = presence(
        bool(doc.get("online", False)),
        doc.get("last_seen"),
        state.get("last_ts"),
        datetime.now(UTC),
        window,
    )
    return {
        "device": doc["_id"],
        "tenant": doc["tenant"],
        "enabled": bool(doc.get("enabled", False)),
        "online": seen.online,
        "connected": seen.connected,
        "online_via": seen.via,
        "last_seen": iso_z(seen.last_seen),
        "created": iso_z(doc.get("created")),
        "last_reading": iso_z(state.get("last_ts")),
        "latest": {
            stream: {"ts": iso_z(entry["ts"]), "id": entry["id"], "values": entry["values"]}
            for stream, entry in sorted(latest.items())
        },
        "quarantine": _quarantine_json(held),
    }


def _one_device(device_id: str) -> dict[str, Any]:
    """The visible device (404 otherwise) with its state."""
    db = get_db()
    doc = visible_device(device_id)
    return _device_json(doc, device_state.get(db, device_id), quarantine.get(db, device_id))


@bp.get("")
@login_required
@operation(query=models.TenantQuery, answer=models.Devices, errors={404: ["not_found"]})
def list_devices(query: models.TenantQuery) -> dict[str, Any]:
    """Devices of the caller's tenant (``?tenant=`` for operators)."""
    scope = tenant_scope(query.tenant)
    match = {} if scope is None else {"tenant": scope}
    docs = list(get_db()[mongo.DEVICES].find(match, {"password_hash": 0}).sort("_id", 1))
    states = device_state.of_tenant(get_db(), scope)
    held = quarantine.find_many(get_db(), [doc["_id"] for doc in docs])
    return {
        "devices": [_device_json(doc, states.get(doc["_id"]), held.get(doc["_id"])) for doc in docs]
    }


@bp.post("")
@roles_required(*MANAGERS)
@operation(
    body=models.NewDevice,
    status=201,
    answer=models.Credentials,
    errors={400: ["reserved_id"], 404: ["not_found"], 409: ["exists"]},
    links={
        "GetDevice": {
            "operationId": "get_device",
            "parameters": {"device_id": "$response.body#/device"},
        },
        "DisableDevice": {
            "operationId": "disable_device",
            "parameters": {"device_id": "$response.body#/device"},
        },
    },
)
def register_device(body: models.NewDevice) -> tuple[dict[str, Any], int]:
    """Register a device: its credentials, shown once."""
    device_id = body.device
    tenant = tenant_scope(body.tenant)
    if tenant is None:
        raise ApiError(400, "bad_parameter", "operators must name the tenant")
    try:
        settings = current_app.config["FAIRWAY_SETTINGS"]
        credentials = provision_device(settings, get_db(), tenant, device_id)
    except ValueError as exc:
        raise bad_input(exc) from None
    except mongo.AlreadyExists as exc:
        raise ApiError(409, "exists", str(exc)) from None
    return credentials, 201


@bp.post("/bulk")
@roles_required(*MANAGERS)
@operation(body=models.NewDevices, answer=models.ProvisionedDevices, errors={404: ["not_found"]})
def register_devices(body: models.NewDevices) -> dict[str, Any]:
    """Register many devices of one tenant in one batch: their credentials, shown once.

    Every device gets a `result`: `created`, `exists` (already this tenant's, bound
    again) or `refused` with a stable `reason` (`reserved_id`, `duplicate`, `exists` for
    an id another tenant holds); one refused device does not stop the others.
    """
    tenant = tenant_scope(body.tenant)
    if tenant is None:
        raise ApiError(400, "bad_parameter", "operators must name the tenant")
    if registry.tenant_document(get_db(), tenant) is None:
        raise ApiError(404, "not_found", f"no tenant {tenant!r}")
    settings = current_app.config["FAIRWAY_SETTINGS"]
    with BulkProvisioner(settings, get_db(), "fairway-web-provision") as bulk:
        report = bulk.register_devices(tenant, body.devices)
    return {
        "counts": report.counts()["devices"],
        "devices": [outcome.as_json() for outcome in report.devices],
    }


@bp.get("/<device_id>")
@login_required
@operation(answer=models.Device, errors={404: ["not_found"]})
def get_device(device_id: str) -> dict[str, Any]:
    """One device and its state."""
    return _one_device(device_id)


def _close_connections(device_id: str, why: str) -> int:
    """Close the device's open broker connections so the change applies at once."""
    settings = current_app.config["FAIRWAY_SETTINGS"]
    if is_reserved_id(device_id):
        # A device registered under a service account's name before ids were reserved:
        # closing "its" connections would cut every relay, scheduler and worker.
        log.warning("not closing connections of reserved user name %s", device_id)
        count_refusal(RESERVED_ID)
        return 0
    try:
        return management.close_connections(
            settings.rabbitmq_mgmt_url, settings.vhost, device_id, why
        )
    except Exception:  # the registry change already holds; new logins are refused
        log.warning("could not close connections of %s", device_id, exc_info=True)
        return -1


@bp.post("/<device_id>/disable")
@roles_required(*MANAGERS)
@operation(answer=models.DisabledDevice, errors={404: ["not_found"]})
def disable_device(device_id: str) -> dict[str, Any]:
    """Disable: new logins refused, open connections closed, relays refuse its messages."""
    visible_device(device_id)
    registry.set_device_enabled(get_db(), device_id, False)
    broker_auth.forget_device(device_id)
    closed = _close_connections(device_id, "device disabled")
    return {**_one_device(device_id), "connections_closed": closed}


@bp.post("/<device_id>/enable")
@roles_required(*MANAGERS)
@operation(answer=models.Device, errors={404: ["not_found"]})
def enable_device(device_id: str) -> dict[str, Any]:
    """Enable again."""
    visible_device(device_id)
    registry.set_device_enabled(get_db(), device_id, True)
    broker_auth.forget_device(device_id)
    return _one_device(device_id)


@bp.post("/<device_id>/lift-quarantine")
@roles_required(*MANAGERS)
@operation(answer=models.Device, errors={404: ["not_found"]})
def lift_quarantine(device_id: str) -> dict[str, Any]:
    """End the device's quarantine now (idempotent: nothing to lift answers the same)."""
    visible_device(device_id)
    if quarantine.lift(get_db(), device_id, datetime.now(UTC).timestamp(), current_user().id):
        log.info("quarantine lifted", extra={"device": device_id})
    return _one_device(device_id)


@bp.post("/<device_id>/rotate")
@roles_required(*MANAGERS)
@operation(answer=models.Rotated, errors={404: ["not_found"]})
def rotate_credentials(device_id: str) -> dict[str, Any]:
    """A new password, shown once; connections with the old one are closed."""
    doc = visible_device(device_id)
    key = broker_auth.hash_key(current_app.config["FAIRWAY_SETTINGS"])
    password = registry.rotate_device_password(get_db(), device_id, key)
    broker_auth.forget_device(device_id)
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
@operation(query=models.HistoryQuery, answer=models.History, errors={404: ["not_found"]})
def history(device_id: str, query: models.HistoryQuery) -> dict[str, Any]:
    """Readings newest first, hour by hour: at most 168 hours a request, then next_cursor."""
    doc = visible_device(device_id)
    start, end = query.start, query.end
    if start and end and start > end:
        raise ApiError(400, "bad_parameter", "from must not be after to")
    read = telemetry.HistoryQuery(
        tenant=doc["tenant"],
        device=device_id,
        limit=query.limit,
        stream=query.stream,
        start=start,
        end=end,
        cursor=_cursor(query.cursor) if query.cursor else None,
    )
    page = telemetry.read_history(get_db(), read)
    return {
        "device": device_id,
        "readings": [_reading_json(d) for d in page.docs],
        "next_cursor": page.next_cursor.encode() if page.next_cursor else None,
    }


def _reading_json(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": split_reading_id(doc["_id"])[2],
        "stream": doc["stream"],
        "ts": iso_z(doc["ts"]),
        "received": iso_z(doc.get("received")),
        "values": doc["values"],
    }


def _cursor(raw: str) -> telemetry.Cursor:
    """``<ts>|<_id>`` from a previous page (an empty ``_id``: everything before ``ts``)."""
    raw_ts, bar, last_id = raw.partition("|")
    try:
        if not bar:
            raise ValueError("it is the next_cursor of the previous page")
        return telemetry.Cursor(models.query_time(raw_ts), last_id)
    except ValueError as exc:
        raise ApiError(400, "bad_parameter", f"'cursor': {exc}") from None


# A chart's resolution follows its span, so a chart reads at most a few thousand points:
# raw readings up to 3 hours, per-minute rollups up to 2 days, hourly rollups beyond.
SERIES_RAW_SPAN = timedelta(hours=3)
SERIES_MINUTE_SPAN = timedelta(days=2)
SERIES_MAX_SPAN = timedelta(days=400)


def _stats_json(at: datetime, s: dict[str, float]) -> dict[str, Any]:
    return {
        "t": iso_z(at),
        "n": s["n"],
        "min": s["min"],
        "max": s["max"],
        "mean": s["sum"] / s["n"],
    }


@bp.get("/<device_id>/series")
@login_required
@operation(query=models.SeriesQuery, answer=models.Series, errors={404: ["not_found"]})
def series(device_id: str, query: models.SeriesQuery) -> dict[str, Any]:
    """One metric over from..to: raw points up to 3 hours, per-minute rollups up to 2 days,
    hourly beyond (up to 400 days)."""
    doc = visible_device(device_id)
    metric, stream = query.metric, query.stream
    end = query.end
    if end is None:
        state = device_state.get(get_db(), device_id) or {}
        end = state.get("last_ts") or datetime.now(UTC)
    start = query.start or end - SERIES_RAW_SPAN
    if start > end:
        raise ApiError(400, "bad_parameter", "from must not be after to")
    if end - start > SERIES_MAX_SPAN:
        raise ApiError(400, "bad_parameter", f"at most {SERIES_MAX_SPAN.days} days per chart")
    answer: dict[str, Any] = {"device": device_id, "metric": metric, "stream": stream}
    args = (get_db(), doc["tenant"], device_id, metric, start, end, stream)
    if end - start <= SERIES_RAW_SPAN:
        raw = telemetry.raw_series(*args)
        return {**answer, "resolution": "raw", "points": [[iso_z(t), v] for t, v in raw]}
    if end - start <= SERIES_MINUTE_SPAN:
        minutes = rollups.minute_series(*args)
        return {**answer, "resolution": "minute", "points": [_stats_json(*p) for p in minutes]}
    hours = rollups.hourly_series(*args)
    return {**answer, "resolution": "hour", "points": [_stats_json(*p) for p in hours]}


@bp.get("/<device_id>/rejections")
@login_required
@operation(query=models.RejectionsQuery, answer=models.Rejections, errors={404: ["not_found"]})
def rejections(device_id: str, query: models.RejectionsQuery) -> dict[str, Any]:
    """The device's refused messages, newest first, with stable reason codes."""
    doc = visible_device(device_id)
    items = list_rejections(get_db(), doc["tenant"], device_id, query.limit, query.before)
    return {"device": device_id, "rejections": [_rejection_json(r) for r in items]}


def _rejection_json(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k not in ("_id",)}
    out["at"] = iso_z(doc.get("at"))
    return out
