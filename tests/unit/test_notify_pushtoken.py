"""Unit tests for ``fairway.domain.pushtoken``: round trip, expiry, tampering, wrong key."""

from __future__ import annotations

import time

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from fairway.domain import pushtoken

KEY = "a-test-secret-key-0123456789"


def test_round_trip() -> None:
    token = pushtoken.issue(KEY, "ann", "acme")
    assert pushtoken.verify(KEY, token, 60) == {"user": "ann", "tenant": "acme"}
    operator = pushtoken.issue(KEY, "root", None)
    assert pushtoken.verify(KEY, operator, 60) == {"user": "root", "tenant": None}


def test_expired_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    now = int(time.time())
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: now - 61)
    token = pushtoken.issue(KEY, "ann", "acme")
    monkeypatch.undo()
    with pytest.raises(pushtoken.InvalidToken) as err:
        pushtoken.verify(KEY, token, 60)
    assert err.value.expired
    # The same token is still good under a longer lifetime: only the age decided.
    assert pushtoken.verify(KEY, token, 120)["user"] == "ann"


def test_tampered_token_is_refused() -> None:
    token = pushtoken.issue(KEY, "ann", "acme")
    payload, rest = token.split(".", 1)
    forged = URLSafeTimedSerializer(KEY, salt="x").dumps({"user": "root", "tenant": None})
    candidates = [
        token[:-10] + ("A" if token[-10] != "A" else "B") + token[-9:],  # signature changed
        forged.split(".", 1)[0] + "." + rest,  # payload swapped, signature kept
        "",
        "not-a-token",
    ]
    for bad in candidates:
        with pytest.raises(pushtoken.InvalidToken) as err:
            pushtoken.verify(KEY, bad, 60)
        assert not err.value.expired
    assert payload  # the token has a payload part at all


def test_wrong_key_or_other_purpose_is_refused() -> None:
    token = pushtoken.issue(KEY, "ann", "acme")
    with pytest.raises(pushtoken.InvalidToken):
        pushtoken.verify("another-secret-key-9876543210", token, 60)
    # Something else signed with the same key (another salt) is not a push token.
    other = URLSafeTimedSerializer(KEY).dumps({"user": "ann", "tenant": "acme"})
    with pytest.raises(pushtoken.InvalidToken):
        pushtoken.verify(KEY, other, 60)


def test_payload_must_name_a_user() -> None:
    token = URLSafeTimedSerializer(KEY, salt=pushtoken.SALT).dumps({"tenant": "acme"})
    with pytest.raises(pushtoken.InvalidToken):
        pushtoken.verify(KEY, token, 60)
