"""Unit tests for ``fairway.domain.pushtoken``: round trip, expiry, tampering, wrong key,
single use."""

from __future__ import annotations

import time

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from fairway.domain import pushtoken

KEY = "a-test-secret-key-0123456789"


def test_round_trip() -> None:
    before = time.time()
    token = pushtoken.issue(KEY, "ann", "acme")
    claims = pushtoken.verify(KEY, token, 60)
    assert (claims["user"], claims["tenant"]) == ("ann", "acme")
    assert int(before) + 60 <= claims["expires"] <= time.time() + 61
    operator = pushtoken.verify(KEY, pushtoken.issue(KEY, "root", None), 60)
    assert (operator["user"], operator["tenant"]) == ("root", None)
    # Every token carries its own random id, even for the same user in the same second.
    ids = {pushtoken.verify(KEY, pushtoken.issue(KEY, "ann", "acme"), 60)["jti"] for _ in range(50)}
    assert len(ids) == 50 and claims["jti"] not in ids


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


def test_payload_must_name_a_user_and_carry_an_id() -> None:
    signer = URLSafeTimedSerializer(KEY, salt=pushtoken.SALT)
    for payload in (
        {"tenant": "acme", "jti": "x"},
        {"user": "ann", "tenant": "acme"},  # issued before tokens were single-use
        {"user": "ann", "tenant": "acme", "jti": ""},
    ):
        with pytest.raises(pushtoken.InvalidToken):
            pushtoken.verify(KEY, signer.dumps(payload), 60)


def test_a_token_id_is_used_once_until_it_expires() -> None:
    used = pushtoken.UsedTokens(max_entries=3)
    assert used.claim("a", expires=100.0, now=10.0) is pushtoken.Claim.FIRST_USE
    assert used.claim("a", expires=100.0, now=50.0) is pushtoken.Claim.REUSED
    assert used.claim("b", expires=120.0, now=50.0) is pushtoken.Claim.FIRST_USE
    assert used.claim("c", expires=130.0, now=50.0) is pushtoken.Claim.FIRST_USE
    # Full of unexpired ids: refuse rather than forget one that could then be replayed.
    assert used.claim("d", expires=140.0, now=60.0) is pushtoken.Claim.FULL
    assert used.claim("a", expires=100.0, now=60.0) is pushtoken.Claim.REUSED
    # Once "a" has expired (verify refuses it anyway) its room is free again.
    assert used.claim("d", expires=140.0, now=101.0) is pushtoken.Claim.FIRST_USE
    assert len(used) == 3


def test_used_token_memory_stays_bounded_under_a_steady_stream() -> None:
    used = pushtoken.UsedTokens(max_entries=1000)
    for i in range(100_000):  # one token a tick, each valid 60 ticks
        assert used.claim(f"t{i}", expires=i + 61.0, now=float(i)) is pushtoken.Claim.FIRST_USE
    assert len(used) <= 62
