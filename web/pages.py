"""Server-rendered pages; their data comes from the JSON API, live updates from the gateway."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from fairway.kernel.reasons import Reason
from web.auth import csrf, log_in
from web.errors import ApiError

bp = Blueprint("pages", __name__)


def page_login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Send anonymous visitors to the login page."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.get("user") is None:
            return redirect(url_for("pages.login", next=request.path))
        return view(*args, **kwargs)

    return wrapper


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | Response | tuple[str, int]:
    """The login form (CSRF-protected, throttled like the API)."""
    if request.method == "GET":
        return render_template("login.html")
    csrf.protect()
    user_id = request.form.get("user", "")
    try:
        log_in(user_id, request.form.get("password", ""))
    except ApiError as exc:
        return render_template("login.html", error=exc.message, user=user_id), exc.status
    return redirect(local_path(request.form.get("next", "")))


def local_path(target: str) -> str:
    """``target`` if it is a path on this site, else ``/``: no open redirect via ``next``.

    Browsers read ``/\\host`` as ``//host`` and drop tabs and newlines, so anything with
    a backslash or a control character is refused along with schemes and hosts.
    """
    parts = urllib.parse.urlsplit(target)
    if (
        not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)
        or parts.scheme
        or parts.netloc
    ):
        return "/"
    return target


@bp.get("/favicon.ico")
def favicon() -> tuple[str, int]:
    """No icon; answer quietly instead of a 404 in every browser console."""
    return "", 204


@bp.post("/logout")
def logout() -> Response:
    """End the session (the form carries the CSRF token)."""
    session.clear()
    return redirect(url_for("pages.login"))


@bp.get("/")
@page_login_required
def dashboard() -> str:
    """Devices with online state and last values, updated live."""
    return render_template("dashboard.html")


@bp.get("/devices/<device_id>")
@page_login_required
def device(device_id: str) -> str:
    """A device's live chart and history (the API enforces tenant scope)."""
    return render_template("device.html", device=device_id)


@bp.get("/alerts")
@page_login_required
def alerts() -> str:
    """Alert rules and the live alerts feed."""
    return render_template("alerts.html")


@bp.get("/rejections")
@page_login_required
def rejections() -> str:
    """Counts by reason per tenant, the ledger of refused messages, replay."""
    codes = sorted({r.value for r in Reason} | {"dead_letter"})
    return render_template("rejections.html", reasons=codes)


@bp.get("/tenants")
@page_login_required
def tenants() -> str:
    """Per-tenant rates, backlogs, lag, weight against served share (operators, admins)."""
    return render_template("tenants.html")


@bp.get("/reports")
@page_login_required
def reports() -> str:
    """Start reports and exports; follow their progress."""
    return render_template("reports.html")
