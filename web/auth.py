"""Who is calling: session login, API tokens, CSRF, login throttling, tenant scoping.

A request is authenticated by either a signed session cookie (browsers, after
``POST /api/login`` or the login page) or an ``Authorization: Bearer`` API token
(scripts). State-changing requests made with the session cookie must carry the
CSRF token (``X-CSRF-Token`` header or ``csrf_token`` form field); token requests
need none, since a browser never attaches them by itself. The user is re-read on
every request, so disabling a user or changing a role applies at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from flask import (
    Blueprint,
    Flask,
    Response,
    after_this_request,
    current_app,
    g,
    request,
    session,
)
from flask_wtf.csrf import CSRFProtect, generate_csrf
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import Counter

import web.models as models
from fairway.domain import notify, permissions, pushtoken
from fairway.storage import accounts, registry
from fairway.storage.accounts import User
from fairway.storage.mongo import TENANTS
from ingest.ratelimit import RateLimiter
from web.broker import get_broker
from web.database import get_db
from web.errors import ApiError
from web.login_rate import LoginRate, password_checks
from web.openapi import operation

bp = Blueprint("auth", __name__, url_prefix="/api")
csrf = CSRFProtect()

LOGINS = Counter("fairway_web_logins_total", "Login attempts by outcome", ["outcome"])

F = TypeVar("F", bound=Callable[..., Any])
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def init_app(app: Flask) -> None:
    """Signed sessions, CSRF checked by :func:`load_caller` (not on every view)."""
    settings = app.config["FAIRWAY_SETTINGS"]
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = settings.require_secret()
    app.config.update(
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=int(settings.session_lifetime_s),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.session_lifetime_s),
    )
    csrf.init_app(app)
    app.before_request(load_caller)
    app.extensions["fairway_push_throttle"] = PushThrottle(
        settings.push_token_rate, settings.push_token_burst
    )
    app.extensions[LOGIN_SLOTS] = LoginSlots(
        password_checks(settings.login_concurrency), settings.login_wait_s
    )
    app.extensions[LOGIN_RATE] = LoginRate(
        settings.login_addr_rate,
        settings.login_addr_burst,
        settings.login_user_rate,
        settings.login_user_burst,
    )


LOGIN_SLOTS = "fairway_login_slots"
LOGIN_RATE = "fairway_login_rate"


class LoginSlots:
    """At most ``running`` password checks at once in this process, and as many waiting.

    A check is argon2 (64 MiB, several threads, ~0.2 s of CPU; seconds on a loaded
    machine): without a bound, a flood of logins (fresh user names or addresses pass the
    throttle) runs one per waitress thread and takes every core, and pages, the API and
    the other processes on the host wait. With it, logins take at most ``2 * running``
    of the threads and ``running`` checks' CPU; a login that finds no slot within
    ``wait_s``, or no place to wait, answers 503 ``login_busy``.
    """

    def __init__(self, running: int, wait_s: float) -> None:
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(running)
        self._places = threading.BoundedSemaphore(2 * running)  # running + waiting

    def acquire(self) -> bool:
        """Take a slot (waiting up to ``wait_s``); False if none came free in time."""
        if not self._places.acquire(blocking=False):
            return False
        if self._slots.acquire(timeout=self.wait_s):
            return True
        self._places.release()
        return False

    def release(self) -> None:
        """Give the slot back."""
        self._slots.release()
        self._places.release()


class PushThrottle:
    """Push tokens minted per user: a token bucket per user in this process, thread-safe.

    Every token costs the broker a check (and the gateway a used-id record), so one
    user, or a script with its API token, cannot mint them as fast as it can ask.
    Buckets are LRU-bounded; a user evicted from it starts with a full bucket.
    """

    def __init__(self, rate: float, burst: float, max_users: int = 100_000) -> None:
        self.rate = rate
        self._limiter = RateLimiter(rate, burst, max_users)
        self._lock = threading.Lock()

    def allow(self, user_id: str) -> bool:
        """Take one token from the user's bucket; False if it is empty."""
        with self._lock:
            return self._limiter.allow(user_id, time.monotonic())


def load_caller() -> None:
    """Put the caller (or None) on ``g.user``; enforce CSRF for cookie sessions."""
    g.user = None
    g.auth = None
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        user = accounts.user_for_token(get_db(), header[7:].strip())
        if user is None:
            raise ApiError(401, "invalid_token", "the API token is unknown, expired or revoked")
        g.user, g.auth = user, "token"
        return
    user_id = session.get("user")
    if user_id is None:
        return
    user = accounts.get_user(get_db(), user_id)
    if user is None or not user.enabled:
        session.clear()
        return
    g.user, g.auth = user, "session"
    if request.method in UNSAFE and request.blueprint != "broker_auth":
        csrf.protect()


def current_user() -> User:
    """The authenticated caller (use inside :func:`login_required` views)."""
    user = g.get("user")
    if user is None:
        raise ApiError(401, "login_required", "log in or send an API token")
    return user


def login_required(view: F) -> F:
    """401 unless the request is authenticated."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        current_user()
        return view(*args, **kwargs)

    wrapper.fairway_login = True  # type: ignore[attr-defined]  # read by web.openapi
    return wrapper  # type: ignore[return-value]


def roles_required(*roles: str) -> Callable[[F], F]:
    """403 unless the caller has one of ``roles``."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if current_user().role not in roles:
                raise ApiError(403, "forbidden", f"this needs the role {' or '.join(roles)}")
            return view(*args, **kwargs)

        wrapper.fairway_roles = roles  # type: ignore[attr-defined]  # read by web.openapi
        return wrapper  # type: ignore[return-value]

    return decorate


def tenant_scope(requested: str | None = None) -> str | None:
    """The tenant the caller may act on: operators any (None = all), others their own.

    Asking for another tenant answers 404, so tenant names do not leak.
    """
    user = current_user()
    if requested is not None and not isinstance(requested, str):
        # A dict here would reach MongoDB as a query operator and be stored as a tenant.
        raise ApiError(400, "bad_parameter", "'tenant' must be a tenant id (a string)")
    if user.is_operator:
        if requested is not None and get_db()[TENANTS].count_documents({"_id": requested}) == 0:
            raise ApiError(404, "not_found", f"no tenant {requested!r}")
        return requested
    if requested is not None and requested != user.tenant:
        raise ApiError(404, "not_found", f"no tenant {requested!r}")
    return user.tenant


def check_tenant(tenant: str) -> None:
    """404 unless the caller may see ``tenant`` (an object's owning tenant)."""
    user = current_user()
    if not user.is_operator and tenant != user.tenant:
        raise ApiError(404, "not_found", "not found")


def visible_device(device_id: str, tenant: str | None = None) -> dict[str, Any]:
    """The device document if the caller may see it (and it is ``tenant``'s), else 404."""
    doc = registry.device_document(get_db(), device_id)
    if doc is not None and tenant is not None and doc["tenant"] != tenant:
        doc = None
    return visible_or_404(doc, "device", device_id)


def visible_or_404(doc: dict[str, Any] | None, kind: str, ident: str) -> dict[str, Any]:
    """``doc`` if it exists and the caller may see its tenant; else 404, the same for both,
    so another tenant's ids cannot be told from missing ones."""
    if doc is None:
        raise ApiError(404, "not_found", f"no {kind} {ident!r}")
    try:
        check_tenant(doc["tenant"])
    except ApiError:
        raise ApiError(404, "not_found", f"no {kind} {ident!r}") from None
    return doc


def log_in(user_id: str, password: str) -> User:
    """Check credentials with throttling; start a fresh session. Raises ApiError."""
    settings = current_app.config["FAIRWAY_SETTINGS"]
    rate: LoginRate = current_app.extensions[LOGIN_RATE]
    address = request.remote_addr or ""
    _refuse_over_rate(rate.address_wait(address), "login attempts from this address")
    _refuse_over_rate(rate.user_wait(user_id), "logins of this user")
    db = get_db()
    keys = [f"user:{user_id}", f"addr:{address}"]
    wait = accounts.claim_login_attempt(
        db,
        keys,
        settings.login_max_failures,
        settings.login_window_s,
        settings.login_delay_max_s,
    )
    if wait > 0:
        LOGINS.labels("throttled").inc()
        raise ApiError(
            429, "too_many_attempts", f"too many failed logins; retry in {math.ceil(wait)} s"
        )
    slots: LoginSlots = current_app.extensions[LOGIN_SLOTS]
    if not slots.acquire():
        accounts.unclaim_login_attempt(db, keys)
        LOGINS.labels("busy").inc()

        @after_this_request
        def _retry_after(response: Response) -> Response:
            response.headers["Retry-After"] = "1"
            return response

        raise ApiError(503, "login_busy", "too many logins are being checked; retry in 1 s")
    try:
        user = accounts.authenticate(db, user_id, password)
    finally:
        slots.release()
    if user is None:
        accounts.login_failed(db, keys, settings.login_window_s)
        LOGINS.labels("failed").inc()
        raise ApiError(401, "bad_credentials", "unknown user or wrong password")
    rate.user_succeeded(user.id)
    accounts.login_succeeded(db, keys[0], keys[1:])
    session.clear()  # a fresh session on login: no fixation
    session["user"] = user.id
    session.permanent = True
    g.user, g.auth = user, "session"
    LOGINS.labels("ok").inc()
    return user


def _refuse_over_rate(wait: float, what: str) -> None:
    """429 ``login_rate`` with ``Retry-After`` if ``wait`` > 0 (from :class:`LoginRate`)."""
    if wait <= 0:
        return
    LOGINS.labels("rate").inc()
    retry = str(math.ceil(wait))

    @after_this_request
    def _retry_after(response: Response) -> Response:
        response.headers["Retry-After"] = retry
        return response

    raise ApiError(429, "login_rate", f"too many {what}; retry in {retry} s")


@bp.post("/login")
@operation(
    body=models.Login,
    answer=models.Profile,
    errors={
        401: ["bad_credentials"],
        429: ["too_many_attempts", "login_rate"],
        503: ["login_busy"],
    },
    headers={"Set-Cookie": "the session cookie"},
)
def login(body: models.Login) -> dict[str, Any]:
    """Log in: a session cookie and the caller's profile (with the CSRF token)."""
    return profile(log_in(body.user, body.password))


@bp.post("/logout")
@operation(answer=models.LoggedOut)
def logout() -> dict[str, str]:
    """End the session."""
    session.clear()
    return {"status": "logged out"}


@bp.get("/me")
@login_required
@operation(answer=models.Profile)
def me() -> dict[str, Any]:
    """The caller's profile and this session's CSRF token."""
    return profile(current_user())


def profile(user: User) -> dict[str, Any]:
    """What a client needs to know about the caller."""
    doc = accounts.user_document(get_db(), user.id) or {}
    return {
        "user": user.id,
        "tenant": user.tenant,
        "role": user.role,
        "subscriptions": doc.get("subscriptions", []),
        "csrf_token": generate_csrf() if g.get("auth") == "session" else None,
    }


@bp.post("/tokens")
@login_required
@operation(
    body=models.NewToken,
    body_required=False,
    status=201,
    answer=models.Token,
    errors={403: ["session_required"]},
)
def create_token(body: models.NewToken) -> tuple[dict[str, Any], int]:
    """A new API token for the caller, shown once (from a logged-in session only)."""
    if g.auth != "session":
        # Otherwise a leaked token could keep minting successors and never expire.
        raise ApiError(403, "session_required", "create API tokens from a logged-in session")
    settings = current_app.config["FAIRWAY_SETTINGS"]
    ttl = settings.api_token_ttl_s if body.ttl_s is None else body.ttl_s
    token = accounts.create_api_token(get_db(), current_user().id, float(ttl), body.name)
    return {"token": token, "ttl_s": ttl, "name": body.name}, 201


@bp.get("/push-token")
@login_required
@operation(
    answer=models.PushToken,
    errors={429: ["push_token_rate"]},
)
def push_token() -> dict[str, str]:
    """A short-lived token for the push gateway and the URL to open with it."""
    settings = current_app.config["FAIRWAY_SETTINGS"]
    user = current_user()
    throttle: PushThrottle = current_app.extensions["fairway_push_throttle"]
    if not throttle.allow(user.id):
        retry = max(1, math.ceil(1 / settings.push_token_rate))

        @after_this_request
        def _retry_after(response: Response) -> Response:
            response.headers["Retry-After"] = str(retry)
            return response

        raise ApiError(
            429, "push_token_rate", f"too many push tokens for this user; retry in {retry} s"
        )
    db = get_db()
    doc = accounts.user_document(db, user.id) or {}

    def ensure_exchange(channel: BlockingChannel) -> None:
        if not notify.exchange_exists(channel.connection, user.id):
            # Never synced (created from the CLI) or dropped by a broker restart (user
            # exchanges are transient): nothing is bound, whatever the record says.
            accounts.update_user(db, user.id, bindings=[])
            permissions.sync_bindings(db, channel, user.id)
        elif doc.get("bindings_pending"):
            permissions.sync_bindings(db, channel, user.id)  # finish an interrupted change

    get_broker().run(ensure_exchange)
    url = settings.gateway_public_url or f"http://{settings.gateway_host}:{settings.gateway_port}"
    token = pushtoken.issue(settings.require_secret(), user.id, user.tenant)
    return {"token": token, "url": url.rstrip("/")}
