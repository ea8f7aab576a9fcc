"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition of this process's metrics."""
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
