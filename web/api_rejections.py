"""``/api/rejections``: the tenant-wide ledger of refused messages, counts by reason over
time, and replay of a rejection once its cause is fixed (:mod:`fairway.domain.replay`).

Scope: operators see every tenant; everyone else their own tenant's rejections, plus,
for a device of theirs asked by name, what that device id sent before it was registered
(archived without a tenant), so an admin who registers a device can replay its refused
messages. Replays are for admins and operators.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, current_app, request

from fairway.domain import replay
from fairway.kernel.times import iso_z
from fairway.storage import accounts, registry
from fairway.storage import rejections as archive
from web.auth import current_user, json_body, login_required, roles_required, tenant_scope
from web.broker import get_broker
from web.database import get_db
from web.errors import ApiError
from web.params import limit_param, time_param

bp = Blueprint("rejections", __name__, url_prefix="/api/rejections")
MAX_COUNT_HOURS = archive.COUNT_HOURS_KEPT


def _json(
    doc: dict[str, Any], later: dict[str, list[dict[str, Any]]] | None = None
) -> dict[str, Any]:
    why_not = replay.blocker(doc)
    return {
        "id": str(doc["_id"]),
        "at": iso_z(doc.get("at")),
        "tenant": doc.get("tenant"),
        "device": doc.get("device"),
        "reason": doc.get("reason"),
        "detail": doc.get("detail"),
        "routing_key": doc.get("routing_key"),
        "body": doc.get("body"),
        "body_bytes": doc.get("body_bytes"),
        "replayable": why_not is None,
        "replay_blocker": why_not[0] if why_not else None,
        "replay": replay.status(get_db(), doc, later) if doc.get("replay") else None,
    }


def _device_scope(device: str | None) -> tuple[str | None, bool]:
    """(tenant to filter by, include the device's tenant-less rejections)."""
    scope = tenant_scope(request.args.get("tenant"))
    if device is None or scope is None:
        return scope, False
    found = registry.find_devices(get_db(), [device]).get(device)
    return scope, found is not None and found.tenant == scope


@bp.get("")
@login_required
def ledger() -> dict[str, Any]:
    """Newest first: ``tenant`` (operators), ``device``, ``reason``, ``before``, ``limit``."""
    device = request.args.get("device") or None
    reason = request.args.get("reason") or None
    scope, unowned = _device_scope(device)
    docs = archive.list_rejections(
        get_db(), scope, device, limit_param(), time_param("before"), reason, unowned
    )
    later: dict[str, list[dict[str, Any]]] = {}  # each device's rejections, read once
    return {"rejections": [_json(d, later) for d in docs]}


@bp.get("/counts")
@login_required
def counts() -> dict[str, Any]:
    """Rejections by reason per tenant over the last ``hours`` (default 24), hour by hour."""
    scope = tenant_scope(request.args.get("tenant"))
    raw = request.args.get("hours", "24")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_COUNT_HOURS:
        raise ApiError(400, "bad_parameter", f"hours must be between 1 and {MAX_COUNT_HOURS}")
    now = datetime.now(UTC)
    since = (now - timedelta(hours=int(raw) - 1)).replace(minute=0, second=0, microsecond=0)
    found = archive.reason_counts(get_db(), scope, since)
    tenants = []
    for tenant in sorted(found, key=lambda t: t or ""):
        by_hour = found[tenant]
        total: dict[str, int] = {}
        for counter in by_hour.values():
            for reason, n in counter.items():
                total[reason] = total.get(reason, 0) + n
        tenants.append(
            {
                "tenant": tenant,
                "total": sum(total.values()),
                "by_reason": dict(sorted(total.items())),
                "hours": [
                    {"hour": iso_z(hour), "by_reason": dict(sorted(by_hour[hour].items()))}
                    for hour in sorted(by_hour)
                ],
            }
        )
    return {"since": iso_z(since), "tenants": tenants}


def _visible(rejection_id: str) -> dict[str, Any]:
    """The rejection if the caller may see it, else 404 (missing and foreign alike)."""
    doc = archive.get_rejection(get_db(), rejection_id)
    user = current_user()
    if doc is not None and not user.is_operator and doc.get("tenant") != user.tenant:
        owner = None
        if doc.get("tenant") is None and doc.get("device"):
            found = registry.find_devices(get_db(), [doc["device"]]).get(doc["device"])
            owner = found.tenant if found else None
        if owner != user.tenant:
            doc = None
    if doc is None:
        raise ApiError(404, "not_found", f"no rejection {rejection_id!r}")
    return doc


@bp.get("/<rejection_id>")
@login_required
def one(rejection_id: str) -> dict[str, Any]:
    """One rejection, with its replay's outcome (stored, refused again, pending)."""
    return _json(_visible(rejection_id))


@bp.post("/replay")
@roles_required(accounts.OPERATOR, accounts.ADMIN)
def replay_many() -> dict[str, Any]:
    """``{"ids": [...]}``: replay each at most once; the outcome per id."""
    ids = json_body().get("ids")
    if (
        not isinstance(ids, list)
        or not ids
        or len(ids) > replay.MAX_PER_REQUEST
        or not all(isinstance(i, str) for i in ids)
    ):
        raise ApiError(
            400, "bad_parameter", f"ids must be a list of 1 to {replay.MAX_PER_REQUEST} ids"
        )
    settings = current_app.config["FAIRWAY_SETTINGS"]
    user = current_user()
    results = []
    for rejection_id in dict.fromkeys(ids):
        try:
            doc = _visible(rejection_id)
        except ApiError as exc:
            results.append(replay.Outcome(rejection_id, "refused", exc.code, exc.message))
            continue

        def send(channel: Any, doc: dict[str, Any] = doc) -> replay.Outcome:
            return replay.replay(get_db(), channel, settings, doc, user.id)

        try:
            results.append(get_broker().run(send))
        except replay.ReplayNotTaken as exc:
            results.append(replay.Outcome(rejection_id, "refused", "queue_full", str(exc)))
    return {"results": [r.as_json() for r in results]}
