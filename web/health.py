"""Liveness and readiness. Metrics are served on ``FAIRWAY_METRICS_PORT`` only (web.server),
never on the public port."""

from __future__ import annotations

from flask import Blueprint

from web.database import get_db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, str], int]:
    """The database answers too."""
    try:
        get_db().client.admin.command("ping")
    except Exception as exc:
        return {"status": "unavailable", "detail": str(exc)[:200]}, 503
    return {"status": "ok"}, 200
