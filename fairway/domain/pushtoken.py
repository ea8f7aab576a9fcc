"""Short-lived, single-use push tokens: the web app vouches for a user to the push gateway.

A token is ``{"user", "tenant", "jti"}`` signed with ``FAIRWAY_SECRET_KEY`` and
timestamped (itsdangerous, HMAC-SHA1 over a key derived with a salt of its own, so a
push token is never valid as a session cookie or anything else signed with the same
key). ``jti`` is a random id (96 bits). Browsers put the token in the ``EventSource``
URL, so it must expire quickly (``FAIRWAY_PUSH_TOKEN_TTL_S``); the gateway checks it
once, when a stream opens, and remembers its ``jti`` until it expires
(:class:`UsedTokens`), so a token opens one stream at most: a token copied from a URL,
a log or a proxy cannot open a second one.
"""

from __future__ import annotations

import heapq
import secrets
from enum import StrEnum
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

SALT = "fairway.push-token"
JTI_BYTES = 12


class InvalidToken(Exception):
    """The token is malformed, forged, signed with another key, or expired."""

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=SALT)


def issue(secret_key: str, user_id: str, tenant: str | None) -> str:
    """A signed, timestamped, single-use token naming ``user_id`` and its ``tenant``
    (None: operator)."""
    jti = secrets.token_urlsafe(JTI_BYTES)
    return _serializer(secret_key).dumps({"user": user_id, "tenant": tenant, "jti": jti})


def verify(secret_key: str, token: str, max_age_s: float) -> dict[str, Any]:
    """``{"user", "tenant", "jti", "issued", "expires"}`` of a valid token (epoch seconds:
    when it was signed, whole seconds, and after when :func:`verify` refuses it); raise
    :class:`InvalidToken` otherwise.

    This checks signature, age and shape only; whether the token was used already is
    :class:`UsedTokens`' business.
    """
    if not isinstance(token, str) or not token:
        raise InvalidToken("no token")
    try:
        # Ages are whole seconds, so ``age > max_age_s`` is ``age > floor(max_age_s)``.
        payload, signed_at = _serializer(secret_key).loads(
            token, max_age=int(max_age_s), return_timestamp=True
        )
    except SignatureExpired:
        raise InvalidToken("token expired", expired=True) from None
    except BadSignature:
        raise InvalidToken("bad token") from None
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("user"), str)
        or not isinstance(payload.get("tenant"), str | None)
        or not isinstance(payload.get("jti"), str)
        or not payload["jti"]
    ):
        raise InvalidToken("bad token payload")
    # Refused once its age exceeds int(max_age_s) whole seconds: valid until the end of
    # the second after that.
    expires = signed_at.timestamp() + int(max_age_s) + 1
    return {
        "user": payload["user"],
        "tenant": payload["tenant"],
        "jti": payload["jti"],
        "issued": signed_at.timestamp(),
        "expires": expires,
    }


class Claim(StrEnum):
    """What :meth:`UsedTokens.claim` found."""

    FIRST_USE = "first_use"
    REUSED = "reused"
    FULL = "full"  # too many unexpired ids remembered: refuse rather than forget one


class UsedTokens:
    """The ids of tokens already used, each kept until its token expires.

    Memory is bounded: at most ``max_entries`` ids (about 200 bytes each). Expired ids
    are dropped first; if the bound is still reached, :meth:`claim` answers
    :attr:`Claim.FULL` and the caller refuses the token (forgetting an unexpired id
    would let that token be used again). Not thread-safe: the gateway calls it from
    its reactor thread only.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def claim(self, jti: str, expires: float, now: float) -> Claim:
        """Mark ``jti`` used until ``expires`` (epoch seconds); say whether it was before."""
        self._prune(now)
        if jti in self._expiry:
            return Claim.REUSED
        if len(self._expiry) >= self.max_entries:
            return Claim.FULL
        self._expiry[jti] = expires
        heapq.heappush(self._heap, (expires, jti))
        return Claim.FIRST_USE

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            _expires, jti = heapq.heappop(self._heap)
            del self._expiry[jti]
