"""``/api/rejections``: the tenant-wide ledger of refused messages, counts by reason over
time, and replay of a rejection once its cause is fixed (:mod:`fairway.domain.replay`).

Scope: operators see every tenant; everyone else their own tenant's rejections, plus,
for a device of theirs asked by name, what that device id sent before it was registered
(archived without a tenant), so an admin who registers a device can replay its refused
messages. Replays are for admins and operators.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from flask import Blueprint, current_app
from pydantic import Field

from fairway.domain import replay
from fairway.kernel.ids import ID_PATTERN
from fairway.kernel.times import iso_z
from fairway.storage import accounts, registry
from fairway.storage import rejections as archive
from web.auth import current_user, login_required, roles_required, tenant_scope
from web.broker import get_broker
from web.database import get_db
from web.errors import ApiError
from web.models import Answer, PageLimit, Query, QueryTime, Request, TenantId
from web.openapi import operation

bp = Blueprint("rejections", __name__, url_prefix="/api/rejections")
MAX_COUNT_HOURS = archive.COUNT_HOURS_KEPT


# -- request and answer models (this blueprint's own; web.models holds the shared types) ----
class LedgerQuery(Query):
    tenant: TenantId | None = None
    device: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    reason: Annotated[str, Field(pattern=r"^[a-z_]{1,64}$", description="a reason code")] | None = (
        None
    )
    before: QueryTime | None = None
    limit: PageLimit = 100


class CountsQuery(Query):
    tenant: TenantId | None = None
    hours: Annotated[int, Field(ge=1, le=MAX_COUNT_HOURS)] = 24


class ReplayRequest(Request):
    ids: Annotated[
        list[Annotated[str, Field(pattern=r"^[0-9a-f]{24}$", description="a rejection's id")]],
        Field(min_length=1, max_length=replay.MAX_PER_REQUEST),
    ]


class ReplayState(Answer):
    at: str | None
    by: str | None
    state: Literal["stored", "refused", "pending"]
    readings: list[str] | None = None
    stored: int | None = None
    reason: str | None = None
    detail: str | None = None


class LedgerEntry(Answer):
    id: str
    at: str | None
    tenant: str | None
    device: str | None
    reason: str | None
    detail: str | None
    routing_key: str | None
    index: int | None = Field(None, description="a reading refused out of a device batch")
    body: str | None
    body_bytes: int | None
    replayable: bool
    replay_blocker: str | None = Field(description="why it cannot be replayed")
    replay: ReplayState | None


class Ledger(Answer):
    rejections: list[LedgerEntry]


class HourCounts(Answer):
    hour: str
    by_reason: dict[str, int]


class TenantCounts(Answer):
    tenant: str | None = Field(description="null: refusals of unregistered device ids")
    total: int
    by_reason: dict[str, int]
    hours: list[HourCounts]


class Counts(Answer):
    since: str
    tenants: list[TenantCounts]


class ReplayOutcome(Answer):
    id: str
    outcome: Literal["sent", "refused"]
    message: str
    error: str | None = Field(
        None,
        description="already_replayed, not_replayable, body_truncated, too_soon, not_found,"
        " queue_full",
    )


class ReplayResults(Answer):
    results: list[ReplayOutcome]


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
        "index": doc.get("index"),
        "body": doc.get("body"),
        "body_bytes": doc.get("body_bytes"),
        "replayable": why_not is None,
        "replay_blocker": why_not[0] if why_not else None,
        "replay": replay.status(get_db(), doc, later) if doc.get("replay") else None,
    }


def _device_scope(tenant: str | None, device: str | None) -> tuple[str | None, bool]:
    """(tenant to filter by, include the device's tenant-less rejections)."""
    scope = tenant_scope(tenant)
    if device is None or scope is None:
        return scope, False
    found = registry.find_devices(get_db(), [device]).get(device)
    return scope, found is not None and found.tenant == scope


@bp.get("")
@login_required
@operation(query=LedgerQuery, answer=Ledger, errors={404: ["not_found"]})
def ledger(query: LedgerQuery) -> dict[str, Any]:
    """The tenant's refused messages, newest first (``tenant``: operators), by device and
    reason; with ``device``, also what that id sent before it was registered."""
    device, reason = query.device or None, query.reason or None
    scope, unowned = _device_scope(query.tenant, device)
    docs = archive.list_rejections(
        get_db(), scope, device, query.limit, query.before, reason, unowned
    )
    later: dict[str, list[dict[str, Any]]] = {}  # each device's rejections, read once
    return {"rejections": [_json(d, later) for d in docs]}


@bp.get("/counts")
@login_required
@operation(query=CountsQuery, answer=Counts, errors={404: ["not_found"]})
def counts(query: CountsQuery) -> dict[str, Any]:
    """Rejections by reason per tenant over the last ``hours`` (default 24), hour by hour."""
    scope = tenant_scope(query.tenant)
    now = datetime.now(UTC)
    since = (now - timedelta(hours=query.hours - 1)).replace(minute=0, second=0, microsecond=0)
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
@operation(answer=LedgerEntry, errors={404: ["not_found"]})
def one(rejection_id: str) -> dict[str, Any]:
    """One rejection, with its replay's outcome (stored, refused again, pending)."""
    return _json(_visible(rejection_id))


@bp.post("/replay")
@roles_required(accounts.OPERATOR, accounts.ADMIN)
@operation(body=ReplayRequest, answer=ReplayResults, errors={503: ["broker_unavailable"]})
def replay_many(body: ReplayRequest) -> dict[str, Any]:
    """Re-publish each rejection through the relay's checks, at most once; the outcome per
    id (refused: ``already_replayed``, ``not_replayable``, ``body_truncated``, ``too_soon``,
    ``not_found``, ``queue_full``)."""
    ids = body.ids
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
