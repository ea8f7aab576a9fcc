"""Users, roles, API tokens and login throttling, stored in MongoDB.

Roles: an ``operator`` runs the platform and sees every tenant; a tenant ``admin``
manages its tenant's devices, users and rules; a ``viewer`` reads its tenant and
chooses which devices it follows live. Passwords are hashed with argon2id; API
tokens are random and stored only as a SHA-256 digest, with an expiry.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from fairway.kernel.ids import check_new_id
from fairway.storage.mongo import TENANTS, AlreadyExists

USERS = "users"
API_TOKENS = "api_tokens"
LOGIN_FAILURES = "login_failures"

OPERATOR, ADMIN, VIEWER = "operator", "admin", "viewer"
ROLES = (OPERATOR, ADMIN, VIEWER)
MIN_PASSWORD = 10
TOKEN_PREFIX = "fwt_"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user is unknown, so both answers take the same time.

    Computed on first use: importing this module (the gateway does, via ``web``) should
    not cost an argon2 hash.
    """
    return _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated principal."""

    id: str
    tenant: str | None
    role: str
    enabled: bool = True

    @property
    def is_operator(self) -> bool:
        """Operators see and manage every tenant."""
        return self.role == OPERATOR


def _user(doc: dict[str, Any]) -> User:
    return User(doc["_id"], doc.get("tenant"), doc["role"], bool(doc.get("enabled", True)))


def check_role(role: str, tenant: str | None) -> None:
    """Raise ValueError unless ``role`` exists and fits ``tenant`` (operators have none)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if role == OPERATOR and tenant is not None:
        raise ValueError("an operator belongs to no tenant")
    if role != OPERATOR and tenant is None:
        raise ValueError(f"a {role} needs a tenant")


def create_user(
    db: Database, user_id: str, password: str, role: str, tenant: str | None = None
) -> User:
    """Create a user; raise ValueError on bad input, :class:`AlreadyExists` if taken."""
    check_new_id("user", user_id)
    check_role(role, tenant)
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password must be at least {MIN_PASSWORD} characters")
    if tenant is not None and db[TENANTS].count_documents({"_id": tenant}, limit=1) == 0:
        raise LookupError(f"unknown tenant {tenant!r}")
    try:
        db[USERS].insert_one(
            {
                "_id": user_id,
                "tenant": tenant,
                "role": role,
                "enabled": True,
                "password_hash": _hasher.hash(password),
                "subscriptions": [],
                "bindings": [],
                "created": datetime.now(UTC),
            }
        )
    except DuplicateKeyError:
        raise AlreadyExists(f"user {user_id!r} exists") from None
    return User(user_id, tenant, role)


def get_user(db: Database, user_id: str) -> User | None:
    """The user, or None."""
    doc = db[USERS].find_one({"_id": user_id}, {"tenant": 1, "role": 1, "enabled": 1})
    return _user(doc) if doc else None


def user_document(db: Database, user_id: str) -> dict[str, Any] | None:
    """The stored document without the password hash."""
    return db[USERS].find_one({"_id": user_id}, {"password_hash": 0})


def list_users(db: Database, tenant: str | None = None) -> list[dict[str, Any]]:
    """Users (of one tenant, or all), without password hashes, sorted by id."""
    query = {} if tenant is None else {"tenant": tenant}
    return list(db[USERS].find(query, {"password_hash": 0}).sort("_id", ASCENDING))


def authenticate(db: Database, user_id: str, password: str) -> User | None:
    """The enabled user whose password this is, else None (same cost either way)."""
    doc = db[USERS].find_one({"_id": user_id}) if isinstance(user_id, str) else None
    try:
        _hasher.verify(doc["password_hash"] if doc else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if doc is None or not doc.get("enabled", True):
        return None
    if _hasher.check_needs_rehash(doc["password_hash"]):
        db[USERS].update_one({"_id": user_id}, {"$set": {"password_hash": _hasher.hash(password)}})
    return _user(doc)


def update_user(db: Database, user_id: str, **fields: Any) -> bool:
    """Set ``role``, ``enabled``, ``subscriptions`` or ``bindings``; False if unknown."""
    allowed = {"role", "enabled", "subscriptions", "bindings"}
    if not fields or set(fields) - allowed:
        raise ValueError(f"only {', '.join(sorted(allowed))} can be changed")
    return db[USERS].update_one({"_id": user_id}, {"$set": fields}).matched_count == 1


# -- API tokens ----------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_token(db: Database, user_id: str, ttl_s: float, name: str = "") -> str:
    """A new bearer token for ``user_id`` valid for ``ttl_s`` seconds (shown once)."""
    if ttl_s <= 0:
        raise ValueError("token lifetime must be positive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    db[API_TOKENS].insert_one(
        {
            "_id": _digest(token),
            "user": user_id,
            "name": name[:100],
            "created": now,
            "expires": now + timedelta(seconds=ttl_s),
        }
    )
    return token


def user_for_token(db: Database, token: str) -> User | None:
    """The enabled user a valid, unexpired token belongs to, else None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    doc = db[API_TOKENS].find_one({"_id": _digest(token)})
    if doc is None or doc["expires"] <= datetime.now(UTC):
        return None
    user = get_user(db, doc["user"])
    return user if user is not None and user.enabled else None


def revoke_api_tokens(db: Database, user_id: str) -> int:
    """Delete every token of ``user_id``; return how many."""
    return db[API_TOKENS].delete_many({"user": user_id}).deleted_count


# -- login throttling ----------------------------------------------------------------


def login_blocked_for(db: Database, keys: list[str], max_failures: int, window_s: float) -> float:
    """Seconds until a login for any of ``keys`` (user name, client address) may be tried."""
    now = datetime.now(UTC)
    wait = 0.0
    for doc in db[LOGIN_FAILURES].find({"_id": {"$in": keys}}):
        ends = doc["window_start"] + timedelta(seconds=window_s)
        if doc["count"] >= max_failures and ends > now:
            wait = max(wait, (ends - now).total_seconds())
    return wait


def record_login_failure(db: Database, keys: list[str], window_s: float) -> None:
    """Count a failed login against each key in a fixed window.

    ``$inc`` inside the current window is atomic, so concurrent failures from several
    web processes all count; only the reset of an expired window can race, and that
    loses at most the failures of that one instant.
    """
    now = datetime.now(UTC)
    window_open = now - timedelta(seconds=window_s)
    for key in keys:
        counted = db[LOGIN_FAILURES].update_one(
            {"_id": key, "window_start": {"$gt": window_open}}, {"$inc": {"count": 1}}
        )
        if counted.matched_count == 0:
            db[LOGIN_FAILURES].update_one(
                {"_id": key}, {"$set": {"count": 1, "window_start": now}}, upsert=True
            )


def clear_login_failures(db: Database, keys: list[str]) -> None:
    """Forget failures after a successful login."""
    db[LOGIN_FAILURES].delete_many({"_id": {"$in": keys}})
