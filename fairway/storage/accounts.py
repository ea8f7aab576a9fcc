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
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo import ASCENDING, ReturnDocument
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


_throttle_lock = threading.Lock()
_last_sweep = [0.0]  # monotonic time of this process's last sweep of expired records
SWEEP_INTERVAL_S = 60.0


def login_delay(attempt: int, free: int, delay_max_s: float) -> float:
    """Seconds the attempt after ``attempt`` must wait: none while within ``free``, then
    1 s, 2 s, 4 s ... up to ``delay_max_s``."""
    if attempt < free:
        return 0.0
    return min(2.0 ** min(attempt - free, 32), delay_max_s)


def claim_login_attempt(
    db: Database, keys: list[str], free: int, window_s: float, delay_max_s: float
) -> float:
    """Count one login attempt against each key (user name, client address) *before*
    the password is checked; 0 if it may go ahead, else the seconds to wait (429).

    Increment-then-check: each attempt gets its own number from ``$inc`` (upsert), so
    parallel guesses cannot all pass: beyond the ``free`` attempts, only the one that
    moves ``until`` forward (a compare-and-set) goes ahead. A refused attempt is not
    counted, so hammering does not lengthen the delay, and a record is dropped
    ``window_s`` after its last attempt (FerretDB 1.24 has no TTL indexes: records are
    deleted when read expired, and swept once a minute). FerretDB applies an update as
    read-modify-write, so this process serialises its own claims with a lock.
    """
    now = datetime.now(UTC)
    table = db[LOGIN_FAILURES]
    with _throttle_lock:
        _sweep(db, now)
        wait = 0.0
        for doc in table.find({"_id": {"$in": keys}, "expires": {"$gt": now}}):
            until = doc.get("until")
            if until is not None and until > now:
                wait = max(wait, (until - now).total_seconds())
        if wait > 0:
            return wait
        claimed: list[str] = []
        for key in keys:
            table.delete_one({"_id": key, "expires": {"$lte": now}})
            doc = table.find_one_and_update(
                {"_id": key},
                {"$inc": {"n": 1}, "$set": {"expires": now + timedelta(seconds=window_s)}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            ) or {"n": 1}  # an upsert always returns its document
            delay = login_delay(int(doc["n"]), free, delay_max_s)
            if delay > 0:
                until = doc.get("until")
                moved = table.update_one(
                    {"_id": key, "until": until},
                    {
                        "$set": {
                            "until": now + timedelta(seconds=delay),
                            "delay_s": delay,
                            "expires": now + timedelta(seconds=window_s + delay),
                        }
                    },
                )
                if moved.matched_count == 0 or (until is not None and until > now):
                    table.update_one({"_id": key}, {"$inc": {"n": -1}})  # not counted
                    for earlier in claimed:
                        table.update_one({"_id": earlier}, {"$inc": {"n": -1}})
                    return max(delay, 1.0)
            claimed.append(key)
    return 0.0


def _sweep(db: Database, now: datetime) -> None:
    """Delete expired throttling records, at most once a minute per process."""
    clock = time.monotonic()
    if clock - _last_sweep[0] >= SWEEP_INTERVAL_S:
        _last_sweep[0] = clock
        db[LOGIN_FAILURES].delete_many({"expires": {"$lte": now}})


def login_failed(db: Database, keys: list[str], window_s: float) -> None:
    """After a wrong password: the delay the attempt claimed, and the window its record
    is kept, run from now, not from before the (slow) password check."""
    now = datetime.now(UTC)
    with _throttle_lock:
        for doc in db[LOGIN_FAILURES].find({"_id": {"$in": keys}}):
            # The delay this attempt claimed, even when the check outlasted it (a loaded
            # machine): otherwise a slow check would cancel the delay it earned.
            delay = float(doc.get("delay_s", 0.0))
            changes = {"expires": now + timedelta(seconds=window_s + delay)}
            if delay > 0:
                changes["until"] = now + timedelta(seconds=delay)
            db[LOGIN_FAILURES].update_one({"_id": doc["_id"], "n": doc["n"]}, {"$set": changes})


def unclaim_login_attempt(db: Database, keys: list[str]) -> None:
    """Take back an attempt :func:`claim_login_attempt` counted whose password was never
    checked (no slot to check it in): it must not use up the caller's free attempts."""
    with _throttle_lock:
        for key in keys:
            db[LOGIN_FAILURES].update_one({"_id": key, "n": {"$gt": 0}}, {"$inc": {"n": -1}})


def login_succeeded(db: Database, user_key: str, other_keys: list[str]) -> None:
    """After a right password: forget the user name's record, and do not count the
    attempt against the others (many users behind one address)."""
    with _throttle_lock:
        db[LOGIN_FAILURES].delete_one({"_id": user_key})
        for key in other_keys:
            db[LOGIN_FAILURES].update_one({"_id": key, "n": {"$gt": 0}}, {"$inc": {"n": -1}})
