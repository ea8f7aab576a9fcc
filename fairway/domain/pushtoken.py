"""Short-lived push tokens: the web app vouches for a user to the push gateway.

A token is ``{"user", "tenant"}`` signed with ``FAIRWAY_SECRET_KEY`` and timestamped
(itsdangerous, HMAC-SHA1 over a key derived with a salt of its own, so a push token is
never valid as a session cookie or anything else signed with the same key). Browsers
put it in the ``EventSource`` URL, so it must expire quickly
(``FAIRWAY_PUSH_TOKEN_TTL_S``); the gateway checks it once, when a stream opens.
"""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

SALT = "fairway.push-token"


class InvalidToken(Exception):
    """The token is malformed, forged, signed with another key, or expired."""

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=SALT)


def issue(secret_key: str, user_id: str, tenant: str | None) -> str:
    """A signed, timestamped token naming ``user_id`` and its ``tenant`` (None: operator)."""
    return _serializer(secret_key).dumps({"user": user_id, "tenant": tenant})


def verify(secret_key: str, token: str, max_age_s: float) -> dict[str, Any]:
    """``{"user", "tenant"}`` of a valid token; raise :class:`InvalidToken` otherwise."""
    if not isinstance(token, str) or not token:
        raise InvalidToken("no token")
    try:
        # Ages are whole seconds, so ``age > max_age_s`` is ``age > floor(max_age_s)``.
        payload = _serializer(secret_key).loads(token, max_age=int(max_age_s))
    except SignatureExpired:
        raise InvalidToken("token expired", expired=True) from None
    except BadSignature:
        raise InvalidToken("bad token") from None
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("user"), str)
        or not isinstance(payload.get("tenant"), str | None)
    ):
        raise InvalidToken("bad token payload")
    return {"user": payload["user"], "tenant": payload["tenant"]}
